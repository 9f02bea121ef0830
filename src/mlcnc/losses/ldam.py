"""LDAM (Cao et al., NeurIPS 2019) in multi-label form."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mlcnc.losses.base import LogitLossCriterion
from mlcnc.losses.reduction import ClassFreq, as_class_freq, prepare_logits, reduce_entries


def ldam_margins(class_freq: ClassFreq, max_margin: float) -> Tensor:
    """LDAM's label-distribution-aware margins (Cao et al., NeurIPS 2019), (C,).

    margin_c = max_margin * n_c^(-1/4) / max_j n_j^(-1/4): the rarest class gets max_margin.
    """
    freq = as_class_freq(class_freq, "ldam_margins")
    margin = freq.pow(-0.25)
    return max_margin * margin / margin.max()


def ldam_loss(
    logits: Tensor, targets: Tensor, margins: Tensor, *, scale: float, reduction: str = "mean"
) -> Tensor:
    """LDAM adapted to multi-label: BCE on scale * (z - y * margin_c).

    Each positive logit is lowered by its class margin (``ldam_margins``: larger for rarer
    classes), negatives are left as they are, and the margined logits, multiplied by
    ``scale`` (LDAM's s, meant for cosine logits in [-1, 1]), go through sigmoid BCE instead
    of LDAM's softmax cross-entropy. logits, targets (B, C), margins (C,).
    """
    z, y = prepare_logits(logits, targets, "ldam_loss")
    if margins.shape != (z.shape[1],):
        raise ValueError(
            f"ldam_loss: margins must have shape ({z.shape[1]},), got {tuple(margins.shape)}"
        )
    margined = scale * (z - y * margins.float().view(1, -1))
    return reduce_entries(
        F.binary_cross_entropy_with_logits(margined, y, reduction="none"), reduction
    )


class LDAMCriterion(LogitLossCriterion):
    """Multi-label LDAM: ``ldam_loss`` with ``ldam_margins(class_freq, max_margin)``."""

    term = "ldam"

    def __init__(self, class_freq: ClassFreq, *, max_margin: float, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer("margins", ldam_margins(class_freq, max_margin))

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return ldam_loss(logits, targets, self.margins, scale=self.scale)
