"""Two images per training sample, for the two-sampler methods (BBN, URS).

``PairedSampler`` (``mlcnc.data.samplers``) yields (i, j) index pairs: i from the uniform
sampler, j from the re-balancing one. ``PairedDataset`` turns a pair into one sample, so a
plain ``DataLoader(PairedDataset(train_set), batch_size=B, sampler=PairedSampler(...))``
gives batches ``images (B, 2, 3, H, W)``, ``targets (B, 2, C)``, ``index (B,)`` (the
uniform image's index) and the training loop stays as it is: the model reads
``images[:, 0]`` / ``images[:, 1]`` and the criterion ``targets[:, 0]`` / ``targets[:, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset


class PairedDataset(Dataset):
    """Wraps a dataset of ``(image, target, index)`` items; item (i, j) is
    ``(stack(image_i, image_j) (2, 3, H, W), stack(target_i, target_j) (2, C), i)``.

    Both images go through the base dataset's own (training) transform, independently.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, pair: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        if isinstance(pair, int) or len(pair) != 2:
            raise TypeError(
                "PairedDataset takes (i, j) index pairs from a PairedSampler, got "
                f"{pair!r}; use the base dataset for single images"
            )
        image_a, target_a, index_a = self.base[int(pair[0])]
        image_b, target_b, _ = self.base[int(pair[1])]
        return torch.stack([image_a, image_b]), torch.stack([target_a, target_b]), index_a
