"""LDAM (Cao et al., NeurIPS 2019) in multi-label form."""

from __future__ import annotations

import torch
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


def ldam_margins(class_freq: ClassFreq, max_margin: float) -> Tensor:
    """LDAM's label-distribution-aware margins (Cao et al., NeurIPS 2019), (C,).

    margin_c = max_margin * n_c^(-1/4) / max_j n_j^(-1/4): the rarest class gets max_margin.
    """
    freq = as_class_freq(class_freq, "ldam_margins")
    margin = freq.pow(-0.25)
    return max_margin * margin / margin.max()


def drw_weights(class_freq: ClassFreq, beta: float) -> Tensor:
    """LDAM-DRW's deferred class-balanced weights (LDAM's ``cifar_train.py``, ``train_rule
    DRW``): w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to C, (C,)."""
    freq = as_class_freq(class_freq, "drw_weights").double()
    weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), freq))
    return (weights / weights.sum() * freq.numel()).float()


def ldam_loss(
    logits: Tensor,
    targets: Tensor,
    margins: Tensor,
    *,
    scale: float,
    reduction: str = "mean",
    class_weight: Tensor | None = None,
) -> Tensor:
    """LDAM adapted to multi-label: BCE on scale * (z - y * margin_c).

    Each positive logit is lowered by its class margin (``ldam_margins``: larger for rarer
    classes), negatives are left as they are, and the margined logits, multiplied by
    ``scale`` (LDAM's s, meant for cosine logits in [-1, 1]), go through sigmoid BCE instead
    of LDAM's softmax cross-entropy. logits, targets (B, C), margins (C,).
    ``class_weight`` (C,) multiplies every entry of class c by w_c (DRW), before the
    reduction (the mean stays over the B x C entries).
    """
    z, y = prepare_logits(logits, targets, "ldam_loss")
    if margins.shape != (z.shape[1],):
        raise ValueError(
            f"ldam_loss: margins must have shape ({z.shape[1]},), got {tuple(margins.shape)}"
        )
    margined = scale * (z - y * margins.float().view(1, -1))
    entries = F.binary_cross_entropy_with_logits(margined, y, reduction="none")
    weight = class_weight_row(class_weight, z.shape[1], "ldam_loss")
    return reduce_entries(entries if weight is None else entries * weight, reduction)


class LDAMCriterion(LogitLossCriterion):
    """Multi-label LDAM: ``ldam_loss`` with ``ldam_margins(class_freq, max_margin)``.

    ``drw_epoch``: None (no re-weighting) or the first epoch (0-based) of LDAM-DRW's
    deferred re-weighting, from which every entry of class c is weighted by
    ``drw_weights(class_freq, drw_beta)`` (before it: all 1, the code's beta 0).
    """

    term = "ldam"

    def __init__(
        self,
        class_freq: ClassFreq,
        *,
        max_margin: float,
        scale: float,
        drw_epoch: int | None = None,
        drw_beta: float = 0.9999,
    ) -> None:
        super().__init__()
        if drw_epoch is not None and drw_epoch < 0:
            raise ValueError(f"drw_epoch must be >= 0 or None, got {drw_epoch}")
        self.scale, self.drw_epoch, self.epoch = scale, drw_epoch, 0
        self.register_buffer("margins", ldam_margins(class_freq, max_margin))
        self.register_buffer("drw", drw_weights(class_freq, drw_beta))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def reweighting(self) -> bool:
        return self.drw_epoch is not None and self.epoch >= self.drw_epoch

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        weight = self.drw if self.reweighting else None
        return ldam_loss(logits, targets, self.margins, scale=self.scale, class_weight=weight)
