"""What every logit loss shares: shape checks, the reduction over the global batch, the
class statistics check.

Every loss takes ``logits`` (B, C) and ``targets`` (B, C) with 1 for a positive label and
0 for a negative, is computed in float32 (the inputs are cast; none of the operations used
is one autocast lowers), and has a ``reduction``: ``"mean"`` (over all B*C entries, the
convention of the DB benchmark code), ``"sum"``, or ``"none"`` (the (B, C) entries).
Class statistics (``class_freq``: positives per class in the training split, (C,)) must be
positive wherever a loss divides by them; a class without training positives is refused
with an error naming it, never turned into an infinite weight.

Under DDP the batch is this process's shard of the global batch (``optim.batch_size``):
``"mean"`` divides the shard's sum by the global number of entries and ``"sum"`` scales it
by the number of processes W (``mlcnc.losses.distributed``), so the mean over processes of
the value and of its gradient is the global batch's, for shards of any sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from mlcnc.losses.distributed import global_entry_mean, global_sum

REDUCTIONS = ("mean", "sum", "none")
ClassFreq = Tensor | np.ndarray | Sequence[float]


def reduce_entries(loss: Tensor, reduction: str) -> Tensor:
    """Reduce the (B, C) entries over the global batch (see the module docstring)."""
    if reduction == "mean":
        return global_entry_mean(loss)
    if reduction == "sum":
        return global_sum(loss.sum())
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def prepare_logits(logits: Tensor, targets: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Check shapes and return float32 copies of logits and targets."""
    if logits.dim() != 2:
        raise ValueError(f"{name}: logits must be (B, C), got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"{name}: targets have shape {tuple(targets.shape)}, logits {tuple(logits.shape)}; "
            "expected both (B, C)"
        )
    return logits.float(), targets.float()


def class_weight_row(class_weight: Tensor | None, num_classes: int, name: str) -> Tensor | None:
    if class_weight is None:
        return None
    if class_weight.shape != (num_classes,):
        raise ValueError(
            f"{name}: class_weight must have shape ({num_classes},), got {tuple(class_weight.shape)}"
        )
    return class_weight.float().view(1, -1)


def as_class_freq(class_freq: ClassFreq, name: str, num_samples: int | None = None) -> Tensor:
    """``class_freq`` as a float32 (C,) tensor, refusing classes without training positives.

    With ``num_samples`` (training-set size N) also refuses classes present in every image,
    whose prior logit log(n_c / (N - n_c)) would be infinite.
    """
    freq = torch.as_tensor(np.asarray(class_freq, dtype=np.float64)).float()
    if freq.dim() != 1 or freq.numel() == 0:
        raise ValueError(
            f"{name}: class_freq must be a non-empty (C,) vector, got {tuple(freq.shape)}"
        )
    if not torch.isfinite(freq).all():
        raise ValueError(f"{name}: class_freq has non-finite entries")
    empty = torch.nonzero(freq <= 0).flatten().tolist()
    if empty:
        raise ValueError(
            f"{name}: classes {empty} have no training positive (class_freq <= 0); "
            "this loss divides by the class frequency, so drop these classes or use a "
            "loss that does not (erm, focal, asl, two_way)"
        )
    if num_samples is not None:
        if num_samples <= 0:
            raise ValueError(f"{name}: num_samples must be positive, got {num_samples}")
        full = torch.nonzero(freq >= num_samples).flatten().tolist()
        if full:
            raise ValueError(
                f"{name}: classes {full} are positive in all {num_samples} training images "
                "(class_freq >= num_samples), so they have no negative and no finite prior logit"
            )
    return freq
