"""BCE (ERM, RS, ML-GCN) and re-weighted BCE (RW): pure functions and criteria."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mlcnc.losses.base import LogitLossCriterion
from mlcnc.losses.reduction import (
    ClassFreq,
    as_class_freq,
    class_weight_row,
    prepare_logits,
    reduce_entries,
)


def inverse_frequency_weights(class_freq: ClassFreq, power: float) -> Tensor:
    """Re-weighting by inverse class frequency: w_c = n_c^-power / mean_j n_j^-power, (C,).

    ``power`` 1 is the inverse ("inv"), 0.5 the square-root inverse ("sqrt_inv") frequency.
    Normalised to mean 1 so the loss keeps the scale of plain BCE (DB's code uses N / n_c
    unnormalised; the two differ by one constant factor).
    """
    freq = as_class_freq(class_freq, "inverse_frequency_weights")
    weight = freq.pow(-power)
    return weight / weight.mean()


def bce_loss(
    logits: Tensor, targets: Tensor, class_weight: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Binary cross-entropy on logits, optionally weighted per class (ERM and RW).

    entry (b, c) = -w_c [y log sigmoid(z) + (1 - y) log sigmoid(-z)]; the weight applies to
    the positive and the negative entries of class c alike. logits, targets (B, C).
    """
    z, y = prepare_logits(logits, targets, "bce_loss")
    weight = class_weight_row(class_weight, z.shape[1], "bce_loss")
    loss = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    if weight is not None:
        loss = loss * weight
    return reduce_entries(loss, reduction)


class BCECriterion(LogitLossCriterion):
    """ERM: plain binary cross-entropy."""

    term = "bce"

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return bce_loss(logits, targets)


RW_MODES = {"inv": 1.0, "sqrt_inv": 0.5}


class ReweightedBCECriterion(LogitLossCriterion):
    """RW: BCE with per-class weights from ``inverse_frequency_weights`` (``mode`` inv or sqrt_inv)."""

    term = "bce"

    def __init__(self, class_freq: ClassFreq, *, mode: str) -> None:
        super().__init__()
        if mode not in RW_MODES:
            raise ValueError(
                f"ReweightedBCECriterion: mode must be one of {sorted(RW_MODES)}, got {mode!r}"
            )
        self.mode = mode
        self.register_buffer("class_weight", inverse_frequency_weights(class_freq, RW_MODES[mode]))

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return bce_loss(logits, targets, class_weight=self.class_weight)
