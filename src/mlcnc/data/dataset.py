"""A torch Dataset over a ``MultiLabelSplit``: decodes images with torchvision.io.

Each item is ``(image, target, index)``: image the transformed float tensor (3, H, W),
target the (C,) float32 multi-hot row, index the row of the split it came from.

Bad images (missing, unreadable, corrupt, truncated) raise ``BadImageError`` naming the
file. With ``skip_bad_images=True`` the dataset instead logs a warning for each bad file
and returns the next good item in split order (its own image, target and index, so the
three always agree); ``num_skipped`` / ``skipped_paths`` count the skips *in this process*
(each DataLoader worker has its own copy, so the log lines are the complete record).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file

from mlcnc.data.readers import MultiLabelSplit

log = logging.getLogger(__name__)


class BadImageError(RuntimeError):
    """An image file that cannot be read or decoded; the message names it."""


def read_image(path: str | Path) -> torch.Tensor:
    """Decode ``path`` to a uint8 RGB tensor (3, H, W); ``BadImageError`` naming the file.

    JPEG, PNG, WebP and GIF; grey, palette and RGBA images become RGB. torchvision refuses
    truncated JPEG and PNG data, so a truncated file is an error, not a grey patch.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        data = read_file(str(path)) if size else None
    except (RuntimeError, OSError) as err:
        raise BadImageError(f"{path}: cannot read image file ({err})") from None
    if data is None:
        raise BadImageError(f"{path}: image file is empty")
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as err:
        raise BadImageError(f"{path}: cannot decode image ({err})") from None


class MultiLabelDataset(Dataset):
    """Images and multi-hot targets of one split (see the module docstring)."""

    def __init__(
        self,
        split: MultiLabelSplit,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        skip_bad_images: bool = False,
    ) -> None:
        self.split = split
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.targets = torch.from_numpy(np.ascontiguousarray(split.labels, dtype=np.float32))
        self.skipped_paths: set[Path] = set()

    @property
    def num_skipped(self) -> int:
        """Number of distinct bad images skipped in this process."""
        return len(self.skipped_paths)

    @property
    def class_names(self) -> list[str]:
        return self.split.class_names

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        n = len(self)
        for attempt in range(n):
            item = (index + attempt) % n
            path = self.split.image_paths[item]
            try:
                image = read_image(path)
            except BadImageError as err:
                if not self.skip_bad_images:
                    raise
                if path not in self.skipped_paths:
                    self.skipped_paths.add(path)
                    log.warning(
                        "skipping bad image (%d skipped so far in this process): %s",
                        self.num_skipped,
                        err,
                    )
                continue
            if self.transform is not None:
                image = self.transform(image)
            if not torch.is_floating_point(image):
                image = image.float().div_(255)
            return image, self.targets[item], item
        raise BadImageError(f"{self.split.source}: no readable image in the whole split")


def build_dataset(
    split: MultiLabelSplit,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    skip_bad_images: bool = False,
) -> MultiLabelDataset:
    """The Dataset for ``split`` (contract name used by the engine)."""
    return MultiLabelDataset(split, transform, skip_bad_images)
