"""CB-Focal (Cui et al., CVPR 2019) as DB's benchmark computes it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mlcnc.losses.base import LogitLossCriterion
from mlcnc.losses.reduction import ClassFreq, as_class_freq, prepare_logits, reduce_entries


def effective_number_weights(class_freq: ClassFreq, beta: float) -> Tensor:
    """DB's class-balanced weights w_c = (1 - beta) / (1 - beta^n_c), (C,), not normalised.

    The inverse effective number of Cui et al. (CVPR 2019) exactly as DB's ``CB_weight``
    computes it (``DB: mllt/models/losses/resample_loss.py``, ``ResampleLoss.CB_weight``):
    no normalisation (Cui et al. normalise the weights to sum C), so with beta 0.9 a class
    of 1 image weighs 1 and a class of 50 images about 0.1.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"effective_number_weights: beta must be in [0, 1), got {beta}")
    freq = as_class_freq(class_freq, "effective_number_weights").double()
    return ((1.0 - beta) / (1.0 - torch.pow(beta, freq))).float()


CB_MODES = ("average_w", "by_class", "average_n", "min_n")
"""The sample-weight modes of DB's class-balanced loss (``ResampleLoss.CB_weight``)."""


def class_balanced_sample_weights(
    targets: Tensor, class_freq: Tensor, beta: float, mode: str
) -> Tensor:
    """DB's class-balanced weight of every entry, (B, 1) or (1, C), broadcast over (B, C).

    With E(n) = (1 - beta^n) / (1 - beta) (the effective number) and w_c = 1 / E(n_c)
    (``effective_number_weights``), as in ``DB: mllt/models/losses/resample_loss.py``
    (``ResampleLoss.CB_weight``):

    - ``average_w``: w_i = sum_c y_ic w_c / sum_c y_ic, the mean weight of sample i's positive
      classes, applied to all C entries of sample i, positive and negative: (B, 1).
    - ``by_class``: w_c for every entry of class c, positive or negative, whatever the sample:
      (1, C) (the plain class-balanced weighting of Cui et al.).
    - ``average_n``: 1 / E(mean_c over positives of n_c), per sample: (B, 1).
    - ``min_n``: 1 / E(min over positives of n_c), per sample (the rarest positive): (B, 1).

    A row without any positive: DB divides 0 by 0 (NaN) in ``average_w`` / ``average_n``;
    here it gets the weight of its mode computed over all C classes instead (``average_w``:
    the mean of w_c; ``average_n``: 1 / E(mean n_c)); ``min_n`` keeps DB's value, its
    placeholder count 100000 (weight 1 - beta for beta < 1, up to float rounding).
    No gradient flows through the weights (they depend on targets and counts only).
    """
    if mode not in CB_MODES:
        raise ValueError(f"class-balanced focal: mode must be one of {CB_MODES}, got {mode!r}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"class-balanced focal: beta must be in [0, 1), got {beta}")
    y = targets.float()
    freq = class_freq.float().view(1, -1)  # (1, C)

    def inverse_effective(n: Tensor) -> Tensor:
        return (1.0 - beta) / (1.0 - beta**n)

    count = y.sum(dim=1, keepdim=True)  # (B, 1)
    has_positive = count > 0
    if mode == "by_class":
        return inverse_effective(freq)
    if mode == "average_w":
        class_weight = inverse_effective(freq)  # (1, C)
        mean_pos = (y * class_weight).sum(dim=1, keepdim=True) / count.clamp(min=1.0)
        return torch.where(has_positive, mean_pos, class_weight.mean(dim=1, keepdim=True))
    if mode == "average_n":
        mean_n = (y * freq).sum(dim=1, keepdim=True) / count.clamp(min=1.0)
        mean_n = torch.where(has_positive, mean_n, freq.mean(dim=1, keepdim=True))
        return inverse_effective(mean_n)
    placeholder = torch.full_like(y, 100000.0)  # DB's value for the non-positive entries
    min_n = torch.where(y > 0, freq.expand_as(y), placeholder).min(dim=1, keepdim=True).values
    return inverse_effective(min_n)


def class_balanced_focal_loss(
    logits: Tensor,
    targets: Tensor,
    class_freq: Tensor,
    *,
    beta: float,
    gamma: float,
    mode: str,
    balance_param: float,
    reduction: str = "mean",
) -> Tensor:
    """CB-Focal as DB's benchmark computes it: ResampleLoss with reweight_func='CB' and focal.

    entry (i, c) = balance_param (1 - p_t)^gamma w BCE(z, y), where BCE is the per-entry
    binary cross-entropy on the logits, p_t = exp(-BCE(z, y)) computed without the weight
    (so p_t = sigmoid(z) for a positive and sigmoid(-z) for a negative), and w the
    class-balanced weight of ``class_balanced_sample_weights(targets, class_freq, beta,
    mode)``. Gradients flow through (1 - p_t)^gamma, as in DB's code. DB's defaults (method
    ``cb_focal``'s options): beta 0.9, mode ``average_w`` (``ResampleLoss.__init__``'s CB_loss), gamma 2 and
    balance_param 2 (its ``focal`` dict). Source: ``DB: mllt/models/losses/resample_loss.py``
    (``forward``, ``CB_weight``); no CB configuration file is published there, so the logit
    regularisation that ``ResampleLoss`` would also apply under its constructor defaults is
    not part of this loss (CB-Focal is Cui et al.'s weighting plus the focal term).
    logits, targets (B, C); class_freq (C,) positives per class in the training split.
    """
    z, y = prepare_logits(logits, targets, "class_balanced_focal_loss")
    if class_freq.shape != (z.shape[1],):
        raise ValueError(
            f"class_balanced_focal_loss: class_freq must have shape ({z.shape[1]},), "
            f"got {tuple(class_freq.shape)}"
        )
    weight = class_balanced_sample_weights(y, class_freq, beta, mode)
    entry_bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    one_minus_pt = -torch.expm1(-entry_bce)  # 1 - exp(-BCE), exact near 0
    loss = balance_param * one_minus_pt.pow(gamma) * weight * entry_bce
    return reduce_entries(loss, reduction)


class ClassBalancedFocalCriterion(LogitLossCriterion):
    """CB-Focal as in DB's benchmark: ``class_balanced_focal_loss`` (method ``cb_focal``'s
    options give beta, gamma, mode and balance_param)."""

    term = "focal"

    def __init__(
        self, class_freq: ClassFreq, *, beta: float, gamma: float, mode: str, balance_param: float
    ) -> None:
        super().__init__()
        if mode not in CB_MODES:
            raise ValueError(
                f"ClassBalancedFocalCriterion: mode must be one of {CB_MODES}, got {mode!r}"
            )
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"ClassBalancedFocalCriterion: beta must be in [0, 1), got {beta}")
        self.beta, self.gamma, self.mode, self.balance_param = beta, gamma, mode, balance_param
        self.register_buffer("class_freq", as_class_freq(class_freq, "ClassBalancedFocalCriterion"))

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return class_balanced_focal_loss(
            logits, targets, self.class_freq, beta=self.beta, gamma=self.gamma, mode=self.mode,
            balance_param=self.balance_param,
        )  # fmt: skip
