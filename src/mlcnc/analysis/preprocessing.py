"""What a trained model expects of its input, read from its evaluation transform.

Prediction de-normalises the model's input to draw attention overlays on the exact pixels
the model saw, and export records the preprocessing in the exported file's metadata; both
read it here, from the transform itself, so they cannot disagree with what was applied.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2

from mlcnc.data.transforms import eval_resize_size


@dataclass(frozen=True)
class Preprocessing:
    """RGB image -> resize -> center crop ``image_size`` (when ``crop``) -> scale to [0, 1]
    -> (x - mean) / std, channel first (3, H, W).

    crop true (``resize_center_crop``): the short side is resized to ``resize_size``, the
    aspect kept, then the center ``image_size`` square is cropped. crop false
    (``resize_square``): the image is resized to ``resize_size`` x ``resize_size``
    (= ``image_size``), the aspect not kept, nothing cropped. mean 0, std 1: the pixels are
    only scaled to [0, 1] (``data.normalize=false``).
    """

    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def denormalize(self, images: Tensor) -> Tensor:
        """Normalised (B, 3, H, W) float -> uint8 (B, 3, H, W), the pixels the model saw."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)


def preprocessing_of(transform: Any, image_size: int) -> Preprocessing:
    """The preprocessing of an evaluation transform (a torchvision v2 ``Compose``).

    Raises ValueError if the transform has no ``Normalize`` step to read the statistics from.
    """
    steps = list(getattr(transform, "transforms", [transform]))
    normalize = [step for step in steps if isinstance(step, v2.Normalize)]
    if len(normalize) != 1:
        raise ValueError(
            f"cannot read the normalisation of the evaluation transform {transform!r}: "
            f"expected one torchvision v2 Normalize step, found {len(normalize)}"
        )
    mean, std = (
        tuple(float(v) for v in values) for values in (normalize[0].mean, normalize[0].std)
    )
    resize = [step for step in steps if isinstance(step, v2.Resize)]
    crop = any(isinstance(step, v2.CenterCrop) for step in steps)
    resize_size = resize[0].size if resize else None
    if isinstance(resize_size, (list, tuple)):
        if not crop and len(set(resize_size)) != 1:
            raise ValueError(
                f"cannot describe the evaluation transform {transform!r}: it resizes to "
                f"{list(resize_size)}, not to a square, and does not crop"
            )
        resize_size = resize_size[0]
    if not resize_size:
        resize_size = eval_resize_size(image_size) if crop else image_size
    return Preprocessing(
        image_size=int(image_size),
        resize_size=int(resize_size),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        crop=crop,
    )
