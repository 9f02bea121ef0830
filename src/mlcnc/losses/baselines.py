"""The loss baselines of the paper's Table 1, as pure functions plus thin criteria.

Every loss takes ``logits`` (B, C) and ``targets`` (B, C) with 1 for a positive label and
0 for a negative, is computed in float32 (the inputs are cast; none of the operations used
is one autocast lowers), and has a ``reduction``: ``"mean"`` (over all B*C entries, the
convention of the DB benchmark code; the default except for ASL, whose authors sum),
``"sum"``, or ``"none"`` (the (B, C) entries).
Class statistics (``class_freq``: positives per class in the training split, (C,)) must be
positive wherever a loss divides by them; a class without training positives is refused
with an error naming it, never turned into an infinite weight.

Under DDP the batch is this process's shard of the global batch (``optim.batch_size``):
``"mean"`` divides the shard's sum by the global number of entries and ``"sum"`` scales it
by the number of processes W (``mlcnc.losses.distributed``), so the mean over processes of
the value and of its gradient is the global batch's, for shards of any sizes. Every entry
here depends on its own sample only (class statistics are fixed), so nothing else is global.

Each criterion holds its hyper-parameters and class weights (as buffers, so ``state_dict``
carries them and ``.to(device)`` moves them) and returns ``{"total": loss, <term>: loss}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from mlcnc.losses.base import Criterion
from mlcnc.losses.distributed import global_entry_mean, global_sum
from mlcnc.losses.functional import two_way_loss
from mlcnc.models.output import ModelOutput

REDUCTIONS = ("mean", "sum", "none")
ClassFreq = Tensor | np.ndarray | Sequence[float]


# --------------------------------------------------------------------------- helpers
def _reduce(loss: Tensor, reduction: str) -> Tensor:
    """Reduce the (B, C) entries over the global batch (see the module docstring)."""
    if reduction == "mean":
        return global_entry_mean(loss)
    if reduction == "sum":
        return global_sum(loss.sum())
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _prepare(logits: Tensor, targets: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Check shapes and return float32 copies of logits and targets."""
    if logits.dim() != 2:
        raise ValueError(f"{name}: logits must be (B, C), got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"{name}: targets have shape {tuple(targets.shape)}, logits {tuple(logits.shape)}; "
            "expected both (B, C)"
        )
    return logits.float(), targets.float()


def _class_weight_row(class_weight: Tensor | None, num_classes: int, name: str) -> Tensor | None:
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


# --------------------------------------------------------------------------- class weights
def inverse_frequency_weights(class_freq: ClassFreq, power: float = 1.0) -> Tensor:
    """Re-weighting by inverse class frequency: w_c = n_c^-power / mean_j n_j^-power, (C,).

    ``power`` 1 is the inverse ("inv"), 0.5 the square-root inverse ("sqrt_inv") frequency.
    Normalised to mean 1 so the loss keeps the scale of plain BCE (DB's code uses N / n_c
    unnormalised; the two differ by one constant factor).
    """
    freq = as_class_freq(class_freq, "inverse_frequency_weights")
    weight = freq.pow(-power)
    return weight / weight.mean()


def class_balanced_weights(class_freq: ClassFreq, beta: float = 0.99) -> Tensor:
    """Class-balanced weights of Cui et al. (CVPR 2019), (C,).

    w_c proportional to 1 / E_c with the effective number E_c = (1 - beta^n_c) / (1 - beta),
    normalised so the weights sum to C (as in the paper). beta in [0, 1); beta = 0 gives
    equal weights, beta -> 1 the inverse frequency.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"class_balanced_weights: beta must be in [0, 1), got {beta}")
    freq = as_class_freq(class_freq, "class_balanced_weights").double()
    effective_number = (1.0 - torch.pow(beta, freq)) / (1.0 - beta)
    weight = 1.0 / effective_number
    return (weight * freq.numel() / weight.sum()).float()


def ldam_margins(class_freq: ClassFreq, max_margin: float = 0.5) -> Tensor:
    """LDAM's label-distribution-aware margins (Cao et al., NeurIPS 2019), (C,).

    margin_c = max_margin * n_c^(-1/4) / max_j n_j^(-1/4): the rarest class gets max_margin.
    """
    freq = as_class_freq(class_freq, "ldam_margins")
    margin = freq.pow(-0.25)
    return max_margin * margin / margin.max()


def effective_number_weights(class_freq: ClassFreq, beta: float = 0.9) -> Tensor:
    """DB's class-balanced weights w_c = (1 - beta) / (1 - beta^n_c), (C,), not normalised.

    The inverse effective number of Cui et al. (CVPR 2019) exactly as DB's ``CB_weight``
    computes it (``DB: mllt/models/losses/resample_loss.py``, ``ResampleLoss.CB_weight``):
    no normalisation to sum C (contrast ``class_balanced_weights``), so with beta 0.9 a class
    of 1 image weighs 1 and a class of 50 images about 0.1.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"effective_number_weights: beta must be in [0, 1), got {beta}")
    freq = as_class_freq(class_freq, "effective_number_weights").double()
    return ((1.0 - beta) / (1.0 - torch.pow(beta, freq))).float()


# --------------------------------------------------------------------------- losses
def bce_loss(
    logits: Tensor, targets: Tensor, class_weight: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Binary cross-entropy on logits, optionally weighted per class (ERM and RW).

    entry (b, c) = -w_c [y log sigmoid(z) + (1 - y) log sigmoid(-z)]; the weight applies to
    the positive and the negative entries of class c alike. logits, targets (B, C).
    """
    z, y = _prepare(logits, targets, "bce_loss")
    weight = _class_weight_row(class_weight, z.shape[1], "bce_loss")
    loss = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    gamma: float = 2.0,
    alpha: float | None = None,
    class_weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Sigmoid focal loss (Lin et al., ICCV 2017), optionally weighted per class (CB-Focal).

    entry = w_c * alpha_t * (1 - p_t)^gamma * BCE(z, y), p_t = p for positives and 1 - p
    for negatives, alpha_t = alpha for positives and 1 - alpha for negatives (no alpha term
    when ``alpha`` is None). Computed by ``torchvision.ops.sigmoid_focal_loss``.
    """
    z, y = _prepare(logits, targets, "focal_loss")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"focal_loss: alpha must be in [0, 1] or None, got {alpha}")
    weight = _class_weight_row(class_weight, z.shape[1], "focal_loss")
    loss = sigmoid_focal_loss(z, y, alpha=-1.0 if alpha is None else alpha, gamma=gamma)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def ldam_loss(
    logits: Tensor, targets: Tensor, margins: Tensor, scale: float = 30.0, reduction: str = "mean"
) -> Tensor:
    """LDAM adapted to multi-label: BCE on scale * (z - y * margin_c).

    Each positive logit is lowered by its class margin (``ldam_margins``: larger for rarer
    classes), negatives are left as they are, and the margined logits, multiplied by
    ``scale`` (LDAM's s, meant for cosine logits in [-1, 1]), go through sigmoid BCE instead
    of LDAM's softmax cross-entropy. logits, targets (B, C), margins (C,).
    """
    z, y = _prepare(logits, targets, "ldam_loss")
    if margins.shape != (z.shape[1],):
        raise ValueError(
            f"ldam_loss: margins must have shape ({z.shape[1]},), got {tuple(margins.shape)}"
        )
    margined = scale * (z - y * margins.float().view(1, -1))
    return _reduce(F.binary_cross_entropy_with_logits(margined, y, reduction="none"), reduction)


CB_MODES = ("average_w", "by_class", "average_n", "min_n")
"""The sample-weight modes of DB's class-balanced loss (``ResampleLoss.CB_weight``)."""


def class_balanced_sample_weights(
    targets: Tensor, class_freq: Tensor, beta: float = 0.9, mode: str = "average_w"
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
    beta: float = 0.9,
    gamma: float = 2.0,
    mode: str = "average_w",
    reduction: str = "mean",
    balance_param: float = 2.0,
) -> Tensor:
    """CB-Focal as DB's benchmark computes it: ResampleLoss with reweight_func='CB' and focal.

    entry (i, c) = balance_param (1 - p_t)^gamma w BCE(z, y), where BCE is the per-entry
    binary cross-entropy on the logits, p_t = exp(-BCE(z, y)) computed without the weight
    (so p_t = sigmoid(z) for a positive and sigmoid(-z) for a negative), and w the
    class-balanced weight of ``class_balanced_sample_weights(targets, class_freq, beta,
    mode)``. Gradients flow through (1 - p_t)^gamma, as in DB's code. DB's defaults:
    beta 0.9, mode ``average_w`` (``ResampleLoss.__init__``'s CB_loss), gamma 2 and
    balance_param 2 (its ``focal`` dict). Source: ``DB: mllt/models/losses/resample_loss.py``
    (``forward``, ``CB_weight``); no CB configuration file is published there, so the logit
    regularisation that ``ResampleLoss`` would also apply under its constructor defaults is
    not part of this loss (CB-Focal is Cui et al.'s weighting plus the focal term).
    logits, targets (B, C); class_freq (C,) positives per class in the training split.
    """
    z, y = _prepare(logits, targets, "class_balanced_focal_loss")
    if class_freq.shape != (z.shape[1],):
        raise ValueError(
            f"class_balanced_focal_loss: class_freq must have shape ({z.shape[1]},), "
            f"got {tuple(class_freq.shape)}"
        )
    weight = class_balanced_sample_weights(y, class_freq, beta, mode)
    entry_bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    one_minus_pt = -torch.expm1(-entry_bce)  # 1 - exp(-BCE), exact near 0
    loss = balance_param * one_minus_pt.pow(gamma) * weight * entry_bce
    return _reduce(loss, reduction)


def asymmetric_loss(
    logits: Tensor,
    targets: Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    detach_focal_weight: bool = True,
    reduction: str = "sum",
) -> Tensor:
    """Asymmetric loss, ASL (Ridnik et al., ICCV 2021), as the authors' code computes it.

    p = sigmoid(z); the negatives' shifted probability p_m = max(p - clip, 0), so
    1 - p_m = min(1 - p + clip, 1). Positive entry -(1 - p)^gamma_pos log(max(p, eps)),
    negative entry -p_m^gamma_neg log(max(1 - p_m, eps)).
    Defaults are the authors' training script (``ASL: train.py``: gamma_neg 4, gamma_pos 0,
    clip 0.05, disable_torch_grad_focal_loss=True) and their loss
    (``ASL: src/loss_functions/losses.py``, ``AsymmetricLoss``: eps 1e-8, ``-loss.sum()``):
    - ``detach_focal_weight`` (their disable_torch_grad_focal_loss): the focusing weights
      (1 - p)^gamma_pos and p_m^gamma_neg are constants for the gradient;
    - ``reduction="sum"`` sums all B*C entries (their reduction); ``"mean"`` divides by B*C.
    1 - p is computed as sigmoid(-z) (equal to their 1 - sigmoid(z) up to float rounding).
    """
    z, y = _prepare(logits, targets, "asymmetric_loss")
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
    return _reduce(loss, reduction)


@dataclass(frozen=True)
class DBParams:
    """Distribution-balanced loss parameters (spec 7.4; names of the DB configs in brackets).

    map_alpha (map_param.alpha): floor of the re-balanced weight.
    map_beta (map_param.beta): slope of the weight's sigmoid.
    map_mu (map_param.gamma): threshold of the weight's sigmoid.
    neg_scale (logit_reg.neg_scale): lambda, the scale of negative logits.
    init_bias (logit_reg.init_bias): kappa, the scale of the class-prior logit shift.
    """

    map_alpha: float = 0.1
    map_beta: float = 10.0
    map_mu: float = 0.3
    neg_scale: float = 5.0
    init_bias: float = 0.05


DB_PRESETS: dict[str, DBParams] = {
    "voc": DBParams(map_mu=0.3, neg_scale=5.0),
    "coco": DBParams(map_mu=0.2, neg_scale=2.0),
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
    params: DBParams = DB_PRESETS["voc"],
    focal: bool = True,
    gamma: float = 2.0,
    balance_param: float = 2.0,
    reduction: str = "mean",
) -> Tensor:
    """Distribution-balanced loss (Wu et al., ECCV 2020) exactly as spec 7.4 states it.

    z~ = z + bias_c (``negative_tolerant_bias``); positives use logit z~ with weight w,
    negatives logit lambda z~ with weight w / lambda (w from ``rebalance_weights``).
    Without focal (DB): entry = w' BCE(z~_mod, y). With focal (DB-Focal): entry =
    balance_param (1 - p_t)^gamma w' BCE(z~_mod, y), p_t = exp(-BCE(z~_mod, y)) unweighted.
    ``class_freq`` (C,) positives per class, ``num_samples`` the training-set size N.
    """
    z, y = _prepare(logits, targets, "distribution_balanced_loss")
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
        p_t = torch.exp(-entry_bce)
        loss = balance_param * (1.0 - p_t).pow(gamma) * loss
    return _reduce(loss, reduction)


# --------------------------------------------------------------------------- criteria
class LogitLossCriterion(Criterion):
    """Base of the baseline criteria: a loss of the logits alone, logged under one term."""

    term = "loss"

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, output: ModelOutput, targets: Tensor) -> dict[str, Tensor]:
        value = self.loss(output.logits, targets)
        return {"total": value, self.term: value}


class BCECriterion(LogitLossCriterion):
    """ERM: plain binary cross-entropy."""

    term = "bce"

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return bce_loss(logits, targets)


RW_MODES = {"inv": 1.0, "sqrt_inv": 0.5}


class ReweightedBCECriterion(LogitLossCriterion):
    """RW: BCE with per-class weights from ``inverse_frequency_weights`` (``mode`` inv or sqrt_inv)."""

    term = "bce"

    def __init__(self, class_freq: ClassFreq, mode: str = "inv") -> None:
        super().__init__()
        if mode not in RW_MODES:
            raise ValueError(
                f"ReweightedBCECriterion: mode must be one of {sorted(RW_MODES)}, got {mode!r}"
            )
        self.mode = mode
        self.register_buffer("class_weight", inverse_frequency_weights(class_freq, RW_MODES[mode]))

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return bce_loss(logits, targets, class_weight=self.class_weight)


class FocalCriterion(LogitLossCriterion):
    """Focal loss; with ``class_weight`` (C,) a class-weighted focal loss."""

    term = "focal"

    def __init__(
        self, gamma: float = 2.0, alpha: float | None = None, class_weight: Tensor | None = None
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha
        self.register_buffer("class_weight", None if class_weight is None else class_weight.float())

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return focal_loss(logits, targets, self.gamma, self.alpha, self.class_weight)


class ClassBalancedFocalCriterion(LogitLossCriterion):
    """CB-Focal as in DB's benchmark: ``class_balanced_focal_loss`` (beta 0.9, average_w).

    ``alpha`` exists only so that the current method registry (which passes it) keeps
    working; DB's CB-Focal has no alpha term and any value other than None is refused.
    """

    term = "focal"

    def __init__(
        self,
        class_freq: ClassFreq,
        beta: float = 0.9,
        gamma: float = 2.0,
        alpha: float | None = None,
        mode: str = "average_w",
        balance_param: float = 2.0,
    ) -> None:
        super().__init__()
        if alpha is not None:
            raise ValueError(
                "ClassBalancedFocalCriterion: DB's CB-Focal has no alpha term; leave alpha unset "
                "(use method 'focal' for an alpha-balanced focal loss)"
            )
        if mode not in CB_MODES:
            raise ValueError(
                f"ClassBalancedFocalCriterion: mode must be one of {CB_MODES}, got {mode!r}"
            )
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"ClassBalancedFocalCriterion: beta must be in [0, 1), got {beta}")
        self.beta, self.gamma, self.mode, self.balance_param = beta, gamma, mode, balance_param
        self.alpha = None
        self.register_buffer("class_freq", as_class_freq(class_freq, "ClassBalancedFocalCriterion"))

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return class_balanced_focal_loss(
            logits, targets, self.class_freq, self.beta, self.gamma, self.mode,
            balance_param=self.balance_param,
        )  # fmt: skip


class LDAMCriterion(LogitLossCriterion):
    """Multi-label LDAM: ``ldam_loss`` with ``ldam_margins(class_freq, max_margin)``."""

    term = "ldam"

    def __init__(self, class_freq: ClassFreq, max_margin: float = 0.5, scale: float = 30.0) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer("margins", ldam_margins(class_freq, max_margin))

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return ldam_loss(logits, targets, self.margins, self.scale)


class AsymmetricCriterion(LogitLossCriterion):
    """ASL with the authors' training settings (``asymmetric_loss``'s defaults).

    With ``reduction="sum"`` (the authors' ``-loss.sum()``) the per-process sum is multiplied
    by the DDP world size (``_reduce`` -> ``global_sum``), so that DDP's gradient average equals the
    gradient of the sum over the global batch; ``"mean"`` needs no correction.
    """

    term = "asl"

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        detach_focal_weight: bool = True,
        reduction: str = "sum",
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
            logits, targets, self.gamma_neg, self.gamma_pos, self.clip, self.eps,
            self.detach_focal_weight, self.reduction,
        )  # fmt: skip
        return value  # "sum": scaled to the global-batch sum by _reduce (losses.distributed)


class DistributionBalancedCriterion(LogitLossCriterion):
    """DB (``focal=False``) or DB-Focal (``focal=True``) with the given or preset parameters."""

    term = "db"

    def __init__(
        self,
        class_freq: ClassFreq,
        num_samples: int,
        params: DBParams = DB_PRESETS["voc"],
        focal: bool = True,
        gamma: float = 2.0,
        balance_param: float = 2.0,
    ) -> None:
        super().__init__()
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
            self.focal, self.gamma, self.balance_param,
        )  # fmt: skip


class TwoWayCriterion(LogitLossCriterion):
    """The two-way loss alone (MLC-NC's L_TW, ``mlcnc.losses.functional.two_way_loss``)."""

    term = "two_way"

    def __init__(self, tp: float = 4.0, tn: float = 1.0) -> None:
        super().__init__()
        self.tp, self.tn = tp, tn

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return two_way_loss(logits, targets, tp=self.tp, tn=self.tn)
