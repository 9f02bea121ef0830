"""torchvision transforms v2 presets for the ``paper`` and ``official`` recipes (spec B4).

Input: a uint8 tensor image (3, H, W) as ``torchvision.io.decode_image`` gives it (a PIL
image works too).
Output: float32 (3, image_size, image_size), normalised.

- train (both recipes): RandomResizedCrop(image_size) -> horizontal flip (p 0.5) ->
  ColorJitter(0.4, 0.4, 0.4) -> float -> normalise.
- eval: resize the short side to image_size * 256 / 224 -> center crop -> float ->
  normalise; deterministic. The released code also flips at random at test time; that is
  only available explicitly (``eval_flip=True``).
- normalisation: the recipe's statistics (``mlcnc.recipes``: ImageNet for ``paper``,
  the iNaturalist statistics of the released code for ``official``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from mlcnc.recipes import get_recipe


def eval_resize_size(image_size: int) -> int:
    """Short side before the center crop: 256 for 224 (the recipes' ratio)."""
    return round(image_size * 256 / 224)


def build_transforms(
    recipe: str, image_size: int, train: bool, *, eval_flip: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``recipe``'s training or evaluation transform (see the module docstring)."""
    normalization = get_recipe(recipe)
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    mean, std = normalization.mean, normalization.std
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=mean, std=std)]
    if train:
        steps = [
            v2.RandomResizedCrop(image_size, antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
        ]
    else:
        steps = [v2.RandomHorizontalFlip(p=0.5)] if eval_flip else []
        steps += [
            v2.Resize(eval_resize_size(image_size), antialias=True),
            v2.CenterCrop(image_size),
        ]
    return v2.Compose([v2.ToImage(), *steps, *to_float, v2.ToPureTensor()])
