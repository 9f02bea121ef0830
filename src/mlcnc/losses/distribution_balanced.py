"""The distribution-balanced loss, DB and DB-Focal (Wu et al., ECCV 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mlcnc.losses.base import LogitLossCriterion
from mlcnc.losses.reduction import ClassFreq, as_class_freq, prepare_logits, reduce_entries


@dataclass(frozen=True)
class DBParams:
    """Distribution-balanced loss parameters (spec 7.4; names of the DB configs in brackets).

    map_alpha (map_param.alpha): floor of the re-balanced weight.
    map_beta (map_param.beta): slope of the weight's sigmoid.
    map_mu (map_param.gamma): threshold of the weight's sigmoid.
    neg_scale (logit_reg.neg_scale): lambda, the scale of negative logits.
    init_bias (logit_reg.init_bias): kappa, the scale of the class-prior logit shift.
    """

    map_alpha: float
    map_beta: float
    map_mu: float
    neg_scale: float
    init_bias: float


DB_PRESETS: dict[str, DBParams] = {
    "voc": DBParams(map_alpha=0.1, map_beta=10.0, map_mu=0.3, neg_scale=5.0, init_bias=0.05),
    "coco": DBParams(map_alpha=0.1, map_beta=10.0, map_mu=0.2, neg_scale=2.0, init_bias=0.05),
}
"""The per-dataset DB parameters of the benchmark's configs (spec 7.4)."""


def rebalance_weights(
    targets: Tensor, class_freq: Tensor, map_alpha: float, map_beta: float, map_mu: float
) -> Tensor:
    """DB's re-balanced weight for every entry, positive or negative, (B, C).

    repeat_i = sum_j y_ij / n_j (how often sample i is drawn by class-aware sampling, up to a
    constant), r_ic = (1 / n_c) / repeat_i, w_ic = map_alpha + sigmoid(map_beta (r_ic - map_mu)).
    A row without positives (repeat_i = 0) gets the limit r = inf: w = map_alpha + 1.
    No gradient flows through the weight (it depends on targets and counts only).
    """
    y = targets.float()
    inverse_freq = 1.0 / class_freq.float().view(1, -1)  # (1, C)
    repeat = (y * inverse_freq).sum(dim=1, keepdim=True)  # (B, 1)
    ratio = inverse_freq / repeat.clamp(min=torch.finfo(torch.float32).tiny)
    weight = map_alpha + torch.sigmoid(map_beta * (ratio - map_mu))
    return torch.where(repeat > 0, weight, torch.full_like(weight, map_alpha + 1.0))


def negative_tolerant_bias(
    class_freq: Tensor, num_samples: int, neg_scale: float, init_bias: float
) -> Tensor:
    """DB's class-prior logit shift bias_c = (kappa / lambda) log(n_c / (N - n_c)), (C,)."""
    freq = class_freq.float()
    return (init_bias / neg_scale) * torch.log(freq / (num_samples - freq))


def distribution_balanced_loss(
    logits: Tensor,
    targets: Tensor,
    class_freq: Tensor,
    num_samples: int,
    params: DBParams,
    *,
    focal: bool,
    gamma: float | None = None,
    balance_param: float | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Distribution-balanced loss (Wu et al., ECCV 2020) exactly as spec 7.4 states it.

    z~ = z + bias_c (``negative_tolerant_bias``); positives use logit z~ with weight w,
    negatives logit lambda z~ with weight w / lambda (w from ``rebalance_weights``).
    Without focal (DB): entry = w' BCE(z~_mod, y). With focal (DB-Focal): entry =
    balance_param (1 - p_t)^gamma w' BCE(z~_mod, y), p_t = exp(-BCE(z~_mod, y)) unweighted.
    ``class_freq`` (C,) positives per class, ``num_samples`` the training-set size N.
    """
    z, y = prepare_logits(logits, targets, "distribution_balanced_loss")
    if class_freq.shape != (z.shape[1],):
        raise ValueError(
            f"distribution_balanced_loss: class_freq must have shape ({z.shape[1]},), "
            f"got {tuple(class_freq.shape)}"
        )
    weight = rebalance_weights(y, class_freq, params.map_alpha, params.map_beta, params.map_mu)
    shifted = z + negative_tolerant_bias(
        class_freq, num_samples, params.neg_scale, params.init_bias
    ).view(1, -1)
    scale = y + (1.0 - y) * params.neg_scale  # 1 for positives, lambda for negatives
    entry_bce = F.binary_cross_entropy_with_logits(shifted * scale, y, reduction="none")
    loss = (weight / scale) * entry_bce
    if focal:
        if gamma is None or balance_param is None:
            raise ValueError("distribution_balanced_loss: focal=True needs gamma and balance_param")
        p_t = torch.exp(-entry_bce)
        loss = balance_param * (1.0 - p_t).pow(gamma) * loss
    return reduce_entries(loss, reduction)


class DistributionBalancedCriterion(LogitLossCriterion):
    """DB (``focal=False``) or DB-Focal (``focal=True``) with the given or preset parameters."""

    term = "db"

    def __init__(
        self,
        class_freq: ClassFreq,
        num_samples: int,
        params: DBParams,
        *,
        focal: bool,
        gamma: float | None = None,
        balance_param: float | None = None,
    ) -> None:
        super().__init__()
        if focal and (gamma is None or balance_param is None):
            raise ValueError(
                "DistributionBalancedCriterion: focal=True needs gamma and balance_param"
            )
        self.register_buffer(
            "class_freq", as_class_freq(class_freq, "DistributionBalancedCriterion", num_samples)
        )
        self.num_samples = int(num_samples)
        self.params = params
        self.focal, self.gamma, self.balance_param = focal, gamma, balance_param
        self.term = "db_focal" if focal else "db"

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return distribution_balanced_loss(
            logits, targets, self.class_freq, self.num_samples, self.params,
            focal=self.focal, gamma=self.gamma, balance_param=self.balance_param,
        )  # fmt: skip
