"""MLC-NC's three losses as pure functions (spec A1 and B2), vectorised and computed in float32.

Shapes: B batch, C classes, E class-feature width, P projection width.
Targets are (B, C) with 1 (or any value > 0) for a positive and 0 for a negative.

Under DDP the batch is this process's shard of the global batch (``optim.batch_size``) and
every reduction is over the global batch (``mlcnc.losses.distributed``): the means of L_FLA,
L_FPC and the two-way loss divide by global counts, and the two-way loss's per-class
log-sum-exps combine every shard's.
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
from mlcnc.losses.distributed import gather_stack, global_entry_mean, global_mean, world_size

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


def _filled_logsumexp(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """``masked_logsumexp`` before its -inf: finite (about the most negative float) where
    nothing is selected, so it can still be combined with other shards' values."""
    return torch.logsumexp(x.masked_fill(~mask, torch.finfo(x.dtype).min), dim=dim)


@_float32
def two_way_loss(logits: Tensor, targets: Tensor, *, tp: float, tn: float) -> Tensor:
    """Two-way multi-label loss (Kobayashi, CVPR 2023) as MLC-NC's code computes it (spec 2.3).

    For each sample (row) and each class (column) with at least one positive:
    softplus(tn * logsumexp_neg(z / tn) + tp * logsumexp_pos(-z / tp)); the loss is the mean
    over those rows plus the mean over those columns. A row or column without negatives
    contributes softplus(-inf) = 0 and still counts in its mean; a batch without any
    positive gives 0. logits (B, C), targets (B, C) -> scalar.

    Under DDP a column holds the images of every shard: each process reduces its shard to
    per-class log-sum-exps and counts (4 x C values, whatever its size), one differentiable
    gather shares them, and every process combines them by a log-sum-exp over processes
    into the global batch's per-class term; the per-sample mean divides by the global
    number of rows with a positive (sent with the same gather).
    """
    _check_targets(targets, logits.shape, "two_way_loss")
    z = _upcast(logits)
    positive = targets > 0
    negative = targets == 0

    def softplus_sum(negative_lse: Tensor, positive_lse: Tensor) -> Tensor:
        return F.softplus(tn * negative_lse + tp * positive_lse)

    rows = softplus_sum(
        masked_logsumexp(z / tn, negative, 1), masked_logsumexp(-z / tp, positive, 1)
    )
    row_has_positive = positive.any(dim=1)
    row_sum = torch.where(row_has_positive, rows, torch.zeros_like(rows)).sum()
    # Per class, over this shard: (C,) finite log-sum-exps and (C,) counts.
    negative_lse = _filled_logsumexp(z / tn, negative, 0)
    positive_lse = _filled_logsumexp(-z / tp, positive, 0)
    negative_count, positive_count = negative.sum(dim=0), positive.sum(dim=0)
    row_count = row_has_positive.sum()
    size = world_size()
    if size > 1:
        counts = torch.stack(
            [negative_count, positive_count, F.pad(row_count.view(1), (0, z.shape[1] - 1))]
        ).to(z.dtype)  # (3, C), the row count in the first entry of the last row
        shared = gather_stack(torch.cat([torch.stack([negative_lse, positive_lse]), counts]))
        negative_lse = torch.logsumexp(shared[:, 0], dim=0)  # (C,) over the W shards
        positive_lse = torch.logsumexp(shared[:, 1], dim=0)
        totals = shared[:, 2:].detach().sum(dim=0)  # (3, C): summed over processes
        negative_count, positive_count, row_count = totals[0], totals[1], totals[2, 0]
    has_negative, has_positive = negative_count > 0, positive_count > 0
    per_sample = row_sum * size / row_count.clamp(min=1)
    columns = softplus_sum(
        negative_lse.masked_fill(~has_negative, float("-inf")),
        positive_lse.masked_fill(~has_positive, float("-inf")),
    )
    # Every process holds the same global columns here: a plain mean over them.
    per_class = _masked_mean(columns, has_positive)
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
    return -global_entry_mean(entries)


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
