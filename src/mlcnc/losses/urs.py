"""URS's loss (Guo and Wang, CVPR 2021; ``mlcnc.models.urs``, whose docstring gives the
choices): Eq. (1) with the logit compensation of Eq. (2) and the logit consistency."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mlcnc.losses.base import Criterion
from mlcnc.losses.distributed import global_entry_mean
from mlcnc.models.branches import TwoBranchOutput, paired_targets
from mlcnc.models.output import ModelOutput

CONSISTENCY = ("mse_prob", "mse_logit")


def compensated_bce(
    logits: Tensor, targets: Tensor, compensation: Tensor, class_weight: Tensor | None = None
) -> Tensor:
    """URS's Eq. (2), averaged over the global batch: mean over B x C of
    w_k [y softplus(-(z sigma_p + mu_p)) + (1 - y) softplus(z sigma_n + mu_n)]
    (-log s(x) = softplus(-x), -log(1 - s(x)) = softplus(x)). compensation (4, C)."""
    z, y = logits.float(), targets.float()
    sigma_p, mu_p, sigma_n, mu_n = compensation.float()
    positive = F.softplus(-(z * sigma_p + mu_p))
    negative = F.softplus(z * sigma_n + mu_n)
    loss = y * positive + (1.0 - y) * negative
    if class_weight is not None:
        loss = loss * class_weight.float().view(1, -1)
    return global_entry_mean(loss)


def logit_consistency(first: Tensor, second: Tensor, kind: str) -> Tensor:
    """L_con (a choice, module docstring): mean over B x C of (s(a) - s(b))^2 (``mse_prob``)
    or (a - b)^2 (``mse_logit``), over the global batch."""
    if kind == "mse_prob":
        squares = (torch.sigmoid(first.float()) - torch.sigmoid(second.float())).square()
    elif kind == "mse_logit":
        squares = (first.float() - second.float()).square()
    else:
        raise ValueError(f"consistency must be one of {CONSISTENCY}, got {kind!r}")
    return global_entry_mean(squares)


class URSCriterion(Criterion):
    """Eq. (1): L_cls(u, y^u) + L_cls(r, y^r) + lambda (L_con(u, u^) + L_con(r, r^)).

    Terms: ``total``, ``cls_uniform``, ``cls_rebalanced``, ``consistency`` (unweighted).
    """

    def __init__(
        self,
        *,
        consistency_weight: float,
        consistency: str,
        class_weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        if consistency not in CONSISTENCY:
            raise ValueError(f"consistency must be one of {CONSISTENCY}, got {consistency!r}")
        if consistency_weight < 0:
            raise ValueError(f"consistency_weight must be >= 0, got {consistency_weight}")
        self.consistency_weight, self.consistency = float(consistency_weight), consistency
        self.register_buffer("class_weight", None if class_weight is None else class_weight.float())

    def forward(self, output: ModelOutput, targets: Tensor) -> dict[str, Tensor]:
        fields = ("uniform_cross", "rebalanced_logits", "rebalanced_cross", "compensation_u")
        if any(getattr(output, f, None) is None for f in fields):
            raise ValueError(
                "URSCriterion needs URSModel's paired training output (images (B, 2, 3, H, W))"
            )
        assert isinstance(output, TwoBranchOutput)
        y_u, y_r = paired_targets(targets, "URSCriterion")
        cls_u = compensated_bce(
            output.uniform_logits, y_u, output.compensation_u, self.class_weight
        )
        cls_r = compensated_bce(
            output.rebalanced_logits, y_r, output.compensation_r, self.class_weight
        )
        con = logit_consistency(
            output.uniform_logits, output.uniform_cross, self.consistency
        ) + logit_consistency(output.rebalanced_logits, output.rebalanced_cross, self.consistency)
        total = cls_u + cls_r + self.consistency_weight * con
        return {"total": total, "cls_uniform": cls_u, "cls_rebalanced": cls_r, "consistency": con}
