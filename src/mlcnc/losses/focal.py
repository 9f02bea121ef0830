"""The sigmoid focal loss (Lin et al., ICCV 2017)."""

from __future__ import annotations

from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from mlcnc.losses.base import LogitLossCriterion
from mlcnc.losses.reduction import class_weight_row, prepare_logits, reduce_entries


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    gamma: float,
    alpha: float | None,
    class_weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Sigmoid focal loss (Lin et al., ICCV 2017), optionally weighted per class (CB-Focal).

    entry = w_c * alpha_t * (1 - p_t)^gamma * BCE(z, y), p_t = p for positives and 1 - p
    for negatives, alpha_t = alpha for positives and 1 - alpha for negatives (no alpha term
    when ``alpha`` is None). Computed by ``torchvision.ops.sigmoid_focal_loss``.
    """
    z, y = prepare_logits(logits, targets, "focal_loss")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"focal_loss: alpha must be in [0, 1] or None, got {alpha}")
    weight = class_weight_row(class_weight, z.shape[1], "focal_loss")
    loss = sigmoid_focal_loss(z, y, alpha=-1.0 if alpha is None else alpha, gamma=gamma)
    if weight is not None:
        loss = loss * weight
    return reduce_entries(loss, reduction)


class FocalCriterion(LogitLossCriterion):
    """Focal loss; with ``class_weight`` (C,) a class-weighted focal loss."""

    term = "focal"

    def __init__(
        self, *, gamma: float, alpha: float | None, class_weight: Tensor | None = None
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha
        self.register_buffer("class_weight", None if class_weight is None else class_weight.float())

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return focal_loss(
            logits, targets, gamma=self.gamma, alpha=self.alpha, class_weight=self.class_weight
        )
