"""torchvision transforms v2 presets: the ``paper`` / ``official`` recipes (spec B4) and the
published training recipes of ML-GCN and ASL.

Input: a uint8 tensor image (3, H, W) as ``torchvision.io.decode_image`` gives it (a PIL
image works too).
Output: float32 (3, image_size, image_size), normalised (or only scaled to [0, 1]).

Training presets (``data.train_transform``):

- ``crop_flip_jitter`` (both recipes, the default): RandomResizedCrop(image_size) ->
  horizontal flip (p 0.5) -> ColorJitter(0.4, 0.4, 0.4).
- ``multiscale_crop_flip`` (ML-GCN, Chen et al. 2019): ``MultiScaleCrop`` -> horizontal
  flip (p 0.5).
- ``cutout_randaugment`` (ASL, Ridnik et al. 2021): resize to image_size x image_size ->
  ``Cutout`` (half the side) -> ``UDARandAugment``.

Evaluation presets (``data.eval_transform``):

- ``resize_center_crop`` (the default): resize the short side to image_size * 256 / 224 ->
  center crop.
- ``resize_square``: resize to image_size x image_size, aspect not kept, nothing cropped
  (ML-GCN's ``Warp``, ASL's ``Resize((s, s))``).

Either evaluation preset is deterministic; the released MLC-NC code also flips at random at
test time, which is only available explicitly (``eval_flip=True``).

Then float in [0, 1] and normalisation with the recipe's statistics (``mlcnc.recipes``:
ImageNet for ``paper``, as ML-GCN uses; the iNaturalist statistics of the released code for
``official``). ``normalize=False`` keeps [0, 1] (ASL feeds ``ToTensor`` output): it is an
identity ``Normalize`` (mean 0, std 1), so the transform always has one ``Normalize`` step
that ``mlcnc.analysis.preprocessing`` reads.

The random steps written here draw from torch's global generator (the DataLoader seeds it in
each worker); a ``generator`` argument is for tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mlcnc.data.config import EVAL_TRANSFORMS, TRAIN_TRANSFORMS, DataConfig
from mlcnc.recipes import get_recipe

ML_GCN_SCALES = (1.0, 0.875, 0.75, 0.66, 0.5)


def eval_resize_size(image_size: int) -> int:
    """Short side before the center crop: 256 for 224 (the recipes' ratio)."""
    return round(image_size * 256 / 224)


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""CLIP's normalisation statistics (``data.normalize=clip``)."""


def transforms_for(
    data: DataConfig, recipe: str, train: bool, *, deterministic: bool = False
) -> Callable[[Tensor], Tensor]:
    """The run's training or evaluation transform, from its ``data:`` section and its
    recipe (``method.recipe``, which gives the normalisation).

    Reads ``data.image_size``, ``train_transform``, ``eval_transform``, ``normalize`` and
    ``eval_flip``; ``data.augment=false`` trains on the evaluation transform.
    ``deterministic`` leaves out the random evaluation flip (a loaded model predicts one
    answer per image).
    """
    return build_transforms(
        recipe,
        data.image_size,
        train and data.augment,
        eval_flip=data.eval_flip and not deterministic,
        train_transform=data.train_transform,
        eval_transform=data.eval_transform,
        normalize=data.normalize,
    )


def build_transforms(
    recipe: str,
    image_size: int,
    train: bool,
    *,
    eval_flip: bool = False,
    train_transform: str = "crop_flip_jitter",
    eval_transform: str = "resize_center_crop",
    normalize: bool | str = True,
) -> Callable[[Tensor], Tensor]:
    """The ``recipe``'s training or evaluation transform (see the module docstring)."""
    normalization = get_recipe(recipe)
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    _check_choice("train_transform", train_transform, TRAIN_TRANSFORMS)
    _check_choice("eval_transform", eval_transform, EVAL_TRANSFORMS)
    if normalize == "clip":  # CLIP's own statistics (mlcnc.models.clip.CLIP_MEAN / CLIP_STD)
        mean, std = CLIP_MEAN, CLIP_STD
    elif normalize:
        mean, std = normalization.mean, normalization.std
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=mean, std=std)]
    steps: list[Callable[[Tensor], Tensor]]
    square = [image_size, image_size]
    if train and train_transform == "crop_flip_jitter":
        steps = [
            v2.RandomResizedCrop(image_size, antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
        ]
    elif train and train_transform == "resize_square_flip":  # LMPT / LM-CLIP
        steps = [v2.Resize(square, antialias=True), v2.RandomHorizontalFlip(p=0.5)]
    elif train and train_transform == "multiscale_crop_flip":
        steps = [MultiScaleCrop(image_size), v2.RandomHorizontalFlip(p=0.5)]
    elif train:  # cutout_randaugment
        steps = [v2.Resize(square, antialias=True), Cutout(0.5), UDARandAugment()]
    else:
        steps = [v2.RandomHorizontalFlip(p=0.5)] if eval_flip else []
        if eval_transform == "resize_center_crop":
            steps += [
                v2.Resize(eval_resize_size(image_size), antialias=True),
                v2.CenterCrop(image_size),
            ]
        else:
            steps += [v2.Resize(square, antialias=True)]
    return v2.Compose([v2.ToImage(), *steps, *to_float, v2.ToPureTensor()])


def _check_choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {key} {value!r}; choose one of: {', '.join(allowed)}")


def _randint(high: int, generator: torch.Generator | None, low: int = 0) -> int:
    """One integer uniform in [low, high), from ``generator`` or torch's global one."""
    return int(torch.randint(low, high, (), generator=generator))


def _fill_box(image: Tensor, box: tuple[int, int, int, int], colour: Sequence[int]) -> Tensor:
    """A copy of ``image`` (3, H, W) with rows top:bottom, columns left:right set to
    ``colour`` (RGB in 0..255; scaled to [0, 1] for a float image)."""
    top, left, bottom, right = box
    fill = torch.tensor(colour, dtype=torch.float32)
    if image.is_floating_point():
        fill = fill / 255
    out = image.clone()
    out[..., top:bottom, left:right] = fill.to(image.dtype).view(3, 1, 1)
    return out


class MultiScaleCrop:
    """ML-GCN's training crop: a crop of one of a few sizes at one of 13 fixed places,
    resized to (size, size) (bilinear, antialiased).

    Crop sizes: ``int(min(H, W) * scale)`` for each scale, replaced by ``size`` when fewer
    than 3 px away; a (width, height) pair takes the sizes of scales i and j with
    |i - j| <= max_distort, one pair drawn uniformly from the list of all such pairs (a size
    that occurs twice counts twice, as in ML-GCN). Places: the corners, the centre, the edge
    centres and the four quarter points of a grid with steps (W - w) // 4, (H - h) // 4,
    drawn uniformly (ML-GCN's ``fill_fix_offset`` with ``more_fix_crop``). As in ML-GCN, a
    size snapped above the image's side reaches past its border, which is filled black.
    """

    def __init__(
        self,
        size: int,
        scales: Sequence[float] = ML_GCN_SCALES,
        max_distort: int = 2,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = int(size)
        self.scales = tuple(scales)
        self.max_distort = max_distort
        self.generator = generator

    def crop_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Every allowed (crop width, crop height), duplicates kept."""
        base = min(height, width)
        sides = [max(1, int(base * scale)) for scale in self.scales]
        sides = [self.size if abs(side - self.size) < 3 else side for side in sides]
        return [
            (w, h)
            for i, h in enumerate(sides)
            for j, w in enumerate(sides)
            if abs(i - j) <= self.max_distort
        ]

    @staticmethod
    def offsets(height: int, width: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
        """The 13 (left, top) places of a crop_w x crop_h crop."""
        x, y = (width - crop_w) // 4, (height - crop_h) // 4
        grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0)]
        grid += [(1, 1), (3, 1), (1, 3), (3, 3)]
        return [(i * x, j * y) for i, j in grid]

    def sample(self, height: int, width: int) -> tuple[int, int, int, int]:
        """One random crop of a height x width image: (width, height, left, top)."""
        sizes = self.crop_sizes(height, width)
        crop_w, crop_h = sizes[_randint(len(sizes), self.generator)]
        places = self.offsets(height, width, crop_w, crop_h)
        left, top = places[_randint(len(places), self.generator)]
        return crop_w, crop_h, left, top

    def __call__(self, image: Tensor) -> Tensor:
        height, width = image.shape[-2:]
        crop_w, crop_h, left, top = self.sample(height, width)
        return F.resized_crop(
            image, top, left, crop_h, crop_w, [self.size, self.size], antialias=True
        )

    def __repr__(self) -> str:
        return (
            f"MultiScaleCrop(size={self.size}, scales={self.scales}, "
            f"max_distort={self.max_distort})"
        )


class Cutout:
    """ASL's ``CutoutPIL``: one box of ``factor`` times each side, centred on a uniform
    random pixel, clipped to the image, filled with one uniform random RGB colour.

    With half = int(factor * side + 0.5) // 2 and centre c, ASL draws PIL's rectangle from
    c - half to c + half, end included, so the box spans rows / columns
    max(c - half, 0) .. min(c + half, side - 1): 2 * half + 1 pixels away from the borders.
    ASL's code takes both extents from swapped sides (the vertical one from the width); the
    two agree on the square images its recipe resizes to; here each axis uses its own side.
    """

    def __init__(self, factor: float = 0.5, generator: torch.Generator | None = None) -> None:
        self.factor = factor
        self.generator = generator

    def box(
        self, height: int, width: int, centre_y: int, centre_x: int
    ) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the box around a centre, bottom / right excluded."""
        half_h = int(self.factor * height + 0.5) // 2
        half_w = int(self.factor * width + 0.5) // 2
        return (
            max(centre_y - half_h, 0),
            max(centre_x - half_w, 0),
            min(centre_y + half_h + 1, height),
            min(centre_x + half_w + 1, width),
        )

    def __call__(self, image: Tensor) -> Tensor:
        height, width = image.shape[-2:]
        centre_y = _randint(height, self.generator)
        centre_x = _randint(width, self.generator)
        colour = [_randint(256, self.generator) for _ in range(3)]
        return _fill_box(image, self.box(height, width, centre_y, centre_x), colour)

    def __repr__(self) -> str:
        return f"Cutout(factor={self.factor})"


# The operations of UDARandAugment; signed ones take a random sign.
RANDAUGMENT_OPS = (
    "invert",
    "cutout",
    "sharpness",
    "autocontrast",
    "posterize",
    "shear_x",
    "translate_x",
    "translate_y",
    "shear_y",
    "rotate",
    "equalize",
    "contrast",
    "color",
    "solarize",
    "brightness",
)


class UDARandAugment:
    """The RandAugment that ASL's training imports (``from randaugment import RandAugment``:
    the ``randaugment`` 1.0.2 package on PyPI, whose default follows UDA's policy).

    Two operations, each drawn uniformly from ``RANDAUGMENT_OPS`` with a level drawn
    uniformly from 1..9 of a 10-step range (strength = level / 9 of the maximum), each
    applied with probability 0.5. Maxima: shear 0.3, translation 150/331 of the side,
    rotation 30 degrees (counter-clockwise only, as there), colour / contrast / sharpness /
    brightness factor 1 +- 0.9, posterize 8 -> 4 bits, solarize threshold 256 -> 0, cutout
    20 px (a box [c - s // 2, c + s // 2) filled with (125, 122, 113)); geometric steps fill
    grey 128. Differences: shear samples bilinearly (the package: PIL's bicubic), and the
    colour operations are torchvision's tensor versions of PIL's.
    """

    levels = 10  # the range's steps, level 0 (no change) never drawn
    probability = 0.5
    num_ops = 2
    fill = 128
    cutout_colour = (125, 122, 113)

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def __call__(self, image: Tensor) -> Tensor:
        for _ in range(self.num_ops):
            name = RANDAUGMENT_OPS[_randint(len(RANDAUGMENT_OPS), self.generator)]
            level = _randint(self.levels, self.generator, low=1)
            if float(torch.rand((), generator=self.generator)) < self.probability:
                image = self.apply(image, name, level)
        return image

    def apply(self, image: Tensor, name: str, level: int) -> Tensor:
        """Operation ``name`` at ``level`` (1..9) on a uint8 image (3, H, W)."""
        strength = level / (self.levels - 1)
        sign = 1 if _randint(2, self.generator) else -1
        height, width = image.shape[-2:]
        fill = [float(self.fill)] * 3
        if name in ("shear_x", "shear_y"):
            degrees = sign * float(torch.tensor(0.3 * strength).atan().rad2deg())
            shear = [degrees, 0.0] if name == "shear_x" else [0.0, degrees]
            return F.affine(
                image, 0.0, [0.0, 0.0], 1.0, shear, v2.InterpolationMode.BILINEAR, fill, [0, 0]
            )
        if name in ("translate_x", "translate_y"):
            side = width if name == "translate_x" else height
            shift = sign * 150 / 331 * strength * side
            move = [shift, 0.0] if name == "translate_x" else [0.0, shift]
            return F.affine(image, 0.0, move, 1.0, [0.0, 0.0], fill=fill)
        if name == "rotate":
            return F.rotate(image, 30 * strength, v2.InterpolationMode.NEAREST, fill=fill)
        factor = 1 + sign * 0.9 * strength
        if name == "color":
            return F.adjust_saturation(image, factor)
        if name == "contrast":
            return F.adjust_contrast(image, factor)
        if name == "sharpness":
            return F.adjust_sharpness(image, factor)
        if name == "brightness":
            return F.adjust_brightness(image, factor)
        if name == "posterize":
            return F.posterize(image, int(torch.linspace(8, 4, self.levels).round()[level]))
        if name == "solarize":
            return F.solarize(image, 256 * (1 - strength))
        if name == "autocontrast":
            return F.autocontrast(image)
        if name == "equalize":
            return F.equalize(image)
        if name == "invert":
            return F.invert(image)
        if name == "cutout":
            size = int(torch.linspace(0, 20, self.levels).round()[level])
            y, x = _randint(height, self.generator), _randint(width, self.generator)
            box = (
                max(y - size // 2, 0),
                max(x - size // 2, 0),
                min(y + size // 2, height),
                min(x + size // 2, width),
            )
            return _fill_box(image, box, self.cutout_colour)
        raise ValueError(f"unknown RandAugment operation {name!r}")

    def __repr__(self) -> str:
        return "UDARandAugment(num_ops=2, levels 1..9 of 10, p=0.5)"
