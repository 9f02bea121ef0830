"""ASL, the asymmetric loss (Ridnik et al., ICCV 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from mlcnc.losses.base import LogitLossCriterion
from mlcnc.losses.reduction import prepare_logits, reduce_entries


def asymmetric_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    gamma_neg: float,
    gamma_pos: float,
    clip: float,
    eps: float,
    detach_focal_weight: bool,
    reduction: str,
) -> Tensor:
    """Asymmetric loss, ASL (Ridnik et al., ICCV 2021), as the authors' code computes it.

    p = sigmoid(z); the negatives' shifted probability p_m = max(p - clip, 0), so
    1 - p_m = min(1 - p + clip, 1). Positive entry -(1 - p)^gamma_pos log(max(p, eps)),
    negative entry -p_m^gamma_neg log(max(1 - p_m, eps)).
    Method ``asl``'s defaults (``mlcnc.methods.asl``) are the authors' training script
    (``ASL: train.py``: gamma_neg 4, gamma_pos 0, clip 0.05, disable_torch_grad_focal_loss=True)
    and their loss
    (``ASL: src/loss_functions/losses.py``, ``AsymmetricLoss``: eps 1e-8, ``-loss.sum()``):
    - ``detach_focal_weight`` (their disable_torch_grad_focal_loss): the focusing weights
      (1 - p)^gamma_pos and p_m^gamma_neg are constants for the gradient;
    - ``reduction="sum"`` sums all B*C entries (their reduction); ``"mean"`` divides by B*C.
    1 - p is computed as sigmoid(-z) (equal to their 1 - sigmoid(z) up to float rounding).
    """
    z, y = prepare_logits(logits, targets, "asymmetric_loss")
    if not 0.0 <= clip < 1.0:
        raise ValueError(f"asymmetric_loss: clip must be in [0, 1), got {clip}")
    if gamma_neg < 0 or gamma_pos < 0:
        raise ValueError(
            f"asymmetric_loss: gamma_neg and gamma_pos must be >= 0, got {gamma_neg}, {gamma_pos}"
        )
    p, q = torch.sigmoid(z), torch.sigmoid(-z)  # p and 1 - p
    if clip > 0:
        neg_prob = (q + clip).clamp(max=1.0)  # 1 - p_m
        shifted = (p - clip).clamp(min=0.0)  # p_m = 1 - (1 - p_m), exactly
    else:
        neg_prob, shifted = q, p
    positive = torch.log(p.clamp(min=eps))
    negative = torch.log(neg_prob.clamp(min=eps))
    if gamma_pos > 0:
        w_pos = q.pow(gamma_pos)
        positive = positive * (w_pos.detach() if detach_focal_weight else w_pos)
    if gamma_neg > 0:
        w_neg = shifted.pow(gamma_neg)
        negative = negative * (w_neg.detach() if detach_focal_weight else w_neg)
    loss = -(y * positive + (1.0 - y) * negative)
    return reduce_entries(loss, reduction)


class AsymmetricCriterion(LogitLossCriterion):
    """ASL (``asymmetric_loss``); method ``asl``'s options give the authors' settings.

    With ``reduction="sum"`` (the authors' ``-loss.sum()``) the per-process sum is multiplied
    by the DDP world size (``reduce_entries`` -> ``global_sum``), so that DDP's gradient average equals the
    gradient of the sum over the global batch; ``"mean"`` needs no correction.
    """

    term = "asl"

    def __init__(
        self,
        *,
        gamma_neg: float,
        gamma_pos: float,
        clip: float,
        eps: float,
        detach_focal_weight: bool,
        reduction: str,
    ) -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(
                f"AsymmetricCriterion: reduction must be 'sum' or 'mean', got {reduction!r}"
            )
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip
        self.eps, self.detach_focal_weight, self.reduction = eps, detach_focal_weight, reduction

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        value = asymmetric_loss(
            logits, targets, gamma_neg=self.gamma_neg, gamma_pos=self.gamma_pos, clip=self.clip,
            eps=self.eps, detach_focal_weight=self.detach_focal_weight, reduction=self.reduction,
        )  # fmt: skip
        return value  # "sum": scaled to the global-batch sum by reduce_entries (losses.distributed)
