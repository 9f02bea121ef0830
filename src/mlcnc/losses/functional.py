"""MLC-NC's three losses as pure functions (spec A1 and B2), vectorised and computed in float32.

Shapes: B batch, C classes, E class-feature width, P projection width.
Targets are (B, C) with 1 (or any value > 0) for a positive and 0 for a negative.

Under DDP the batch is this process's shard of the global batch (``optim.batch_size``) and
every reduction is over the global batch (``mlcnc.losses.distributed``): the means of L_FLA
and L_FPC divide by global counts, and the two-way loss is computed on the gathered batch.
The mean over processes of each value, and of its gradient, is the global batch's. These
calls are then collectives (every process calls them); ``local_batch()`` opts out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from mlcnc.geometry import safe_normalize
from mlcnc.losses.distributed import gather_batch, global_mean, world_size

FLA_EPS = 1e-6
"""The epsilon inside both logs of L_FLA (the authors' code, spec 2.1)."""

FPC_REDUCTIONS = ("positive_mean", "per_sample", "none")

_F = TypeVar("_F", bound=Callable[..., Tensor])


def _float32(fn: _F) -> _F:
    """Run a loss outside autocast, so it is computed in float32 under mixed precision."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast(device_type=args[0].device.type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _upcast(x: Tensor) -> Tensor:
    """At least float32 (float64 stays float64, so gradcheck can run in double)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_targets(targets: Tensor, shape: torch.Size, name: str) -> None:
    if targets.shape != shape:
        raise ValueError(
            f"{name}: targets have shape {tuple(targets.shape)}, expected {tuple(shape)}"
        )


def masked_logsumexp(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """log sum exp of ``x`` over the entries where ``mask`` is True, along ``dim``.

    Gives -inf where no entry is selected, without NaN in the value or the gradient
    (masked entries are filled with the most negative finite float, never -inf).
    """
    filled = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    lse = torch.logsumexp(filled, dim=dim)
    return lse.masked_fill(~mask.any(dim=dim), float("-inf"))


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` is True; 0 when nothing is selected."""
    selected = torch.where(mask, values, torch.zeros_like(values))
    return selected.sum() / mask.sum().clamp(min=1)


@_float32
def two_way_loss(logits: Tensor, targets: Tensor, tp: float = 4.0, tn: float = 1.0) -> Tensor:
    """Two-way multi-label loss (Kobayashi, CVPR 2023) as MLC-NC's code computes it (spec 2.3).

    For each sample (row) and each class (column) with at least one positive:
    softplus(tn * logsumexp_neg(z / tn) + tp * logsumexp_pos(-z / tp)); the loss is the mean
    over those rows plus the mean over those columns. A row or column without negatives
    contributes softplus(-inf) = 0 and still counts in its mean; a batch without any
    positive gives 0. logits (B, C), targets (B, C) -> scalar.

    Under DDP the per-class log-sum-exp runs over the images of every shard: logits and
    targets are gathered (one collective, gradients flow back) and every process computes
    the global batch's value.
    """
    _check_targets(targets, logits.shape, "two_way_loss")
    z = _upcast(logits)
    if world_size() > 1:
        num_classes = z.shape[1]
        both = gather_batch(torch.cat([z, targets.to(z.dtype)], dim=1))
        z, targets = both[:, :num_classes], both[:, num_classes:].detach()
    positive = targets > 0
    negative = targets == 0

    def directional(dim: int) -> Tensor:
        negative_term = tn * masked_logsumexp(z / tn, negative, dim)
        positive_term = tp * masked_logsumexp(-z / tp, positive, dim)
        return F.softplus(negative_term + positive_term)

    per_sample = _masked_mean(directional(1), positive.any(dim=1))
    per_class = _masked_mean(directional(0), positive.any(dim=0))
    return per_sample + per_class


@_float32
def feature_label_alignment_loss(
    features: Tensor, label_embeddings: Tensor, targets: Tensor
) -> Tensor:
    """L_FLA (spec A1, 2.1): pull positives to cosine 1, negatives to -1/(C-1), with their label.

    s = cos(f_i^c, l_c); loss = -mean over all B*C entries of
    y log((1 + s)/2 + eps) + (1 - y) log(1 - (C-1)/C |1/(C-1) + s| + eps), eps = 1e-6.
    features (B, C, E), label_embeddings (C, E), targets (B, C) -> scalar.
    """
    num_classes = label_embeddings.shape[0]
    if num_classes < 2:
        raise ValueError("feature_label_alignment_loss needs at least 2 classes")
    if features.shape[1:] != label_embeddings.shape:
        raise ValueError(
            f"feature_label_alignment_loss: features {tuple(features.shape)} do not match "
            f"label_embeddings {tuple(label_embeddings.shape)} (expected (B, C, E) and (C, E))"
        )
    _check_targets(targets, features.shape[:2], "feature_label_alignment_loss")
    f = _upcast(features)
    labels = safe_normalize(_upcast(label_embeddings))
    # cos(f_i^c, l_c) row-wise (no B x C x C product); a zero feature has cosine 0 and no
    # gradient (mlcnc.geometry); clamped to the range a cosine can take (rounding can leave it).
    cosine = torch.einsum("bce,ce->bc", safe_normalize(f), labels).clamp(-1.0, 1.0)
    y = _upcast(targets)
    positive = torch.log((1.0 + cosine) / 2.0 + FLA_EPS)
    spread = (num_classes - 1) / num_classes * (1.0 / (num_classes - 1) + cosine).abs()
    negative = torch.log(1.0 - spread + FLA_EPS)
    entries = y * positive + (1.0 - y) * negative
    return -global_mean(entries.sum(), entries.numel())


@_float32
def collapse_calibration_loss(
    projections: Tensor,
    prototypes: Tensor,
    targets: Tensor,
    tau1: float = 0.5,
    tau2: float | None = None,
    reduction: str = "positive_mean",
    valid: Tensor | None = None,
) -> Tensor:
    """L_FPC, the feature-prototype contrastive ("collapse calibration") loss (spec A1, 2.2).

    For each positive pair (i, c): -log(exp(S_i^{c,c}/tau1) / sum_k exp(S_i^{c,k}/tau2)),
    S_i^{c,k} = cos(mu_i^c, P_k). ``reduction``: "positive_mean" (the code's: mean over
    positive pairs), "per_sample" (the paper's: sum / B) or "none" ((B, C), 0 off positives).
    ``valid`` (C,) bool marks prototypes that exist; the others are left out of every softmax
    and pairs of their own class are skipped, so never-seen classes give no NaN. Nothing
    valid (or no positive) gives 0. Without ``valid``, a zero prototype acts as S = 0.
    projections (B, C, P), prototypes (C, P), targets (B, C). Under DDP both reductions
    divide by global counts (positive pairs, or B), so ``valid`` must agree on every process.
    """
    if reduction not in FPC_REDUCTIONS:
        raise ValueError(f"reduction must be one of {FPC_REDUCTIONS}, got {reduction!r}")
    if projections.shape[1:] != prototypes.shape:
        raise ValueError(
            f"collapse_calibration_loss: projections {tuple(projections.shape)} do not match "
            f"prototypes {tuple(prototypes.shape)} (expected (B, C, P) and (C, P))"
        )
    _check_targets(targets, projections.shape[:2], "collapse_calibration_loss")
    tau2 = tau1 if tau2 is None else tau2
    num_classes = prototypes.shape[0]
    mu = safe_normalize(_upcast(projections))
    centres = safe_normalize(_upcast(prototypes)).to(mu.dtype)
    similarity = torch.einsum("bcp,kp->bck", mu, centres)  # (B, C, C)
    own = similarity.diagonal(dim1=1, dim2=2)  # (B, C): S^{c,c}
    if valid is None:
        valid = torch.ones(num_classes, dtype=torch.bool, device=prototypes.device)
    elif valid.shape != (num_classes,):
        raise ValueError(f"valid must have shape ({num_classes},), got {tuple(valid.shape)}")
    log_denominator = masked_logsumexp(
        similarity / tau2, valid.view(1, 1, -1).expand_as(similarity), dim=-1
    )
    pair_loss = log_denominator - own / tau1  # (B, C)
    selected = (targets > 0) & valid.view(1, -1)
    kept = torch.where(selected, pair_loss, torch.zeros_like(pair_loss))
    if reduction == "none":
        return kept
    if reduction == "per_sample":
        return global_mean(kept.sum(), projections.shape[0])
    return global_mean(kept.sum(), selected.sum())
