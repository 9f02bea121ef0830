"""The two-way loss (Kobayashi, CVPR 2023) alone, as a baseline's criterion."""

from __future__ import annotations

from torch import Tensor

from mlcnc.losses.base import LogitLossCriterion
from mlcnc.losses.functional import two_way_loss


class TwoWayCriterion(LogitLossCriterion):
    """The two-way loss alone (MLC-NC's L_TW, ``mlcnc.losses.functional.two_way_loss``)."""

    batch_level = True  # a log-sum-exp over the batch per class
    term = "two_way"

    def __init__(self, *, tp: float, tn: float) -> None:
        super().__init__()
        self.tp, self.tn = tp, tn

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return two_way_loss(logits, targets, tp=self.tp, tn=self.tn)
