"""MFM, the multi-focal modifier loss of COMIC (Zhang et al., ICCV 2023), as its code computes it.

"Learning in Imperfect Environment: Multi-Label Classification with Long-Tailed Distribution
and Partial Labels". The loss is ``PriorFocalModifierLoss`` in ``COMIC: loss/
PriorFocalModifierLoss.py`` with the settings of ``COMIC: config/voc/voc_resnet50_mlt.yaml``
(gamma_neg 3, gamma_pos 0, clip 0.05, disable_torch_grad_focal_loss True; gamma_class_ng
1.2 is the constructor's default). The MLC-NC repository ships the same formula as
``src_files/loss_functions/mfloss.py`` (``MultiFocalLoss``), with output folders named
``baseline+mfm``: that is why the "MFM" row of MLC-NC's Table 1 is read as this loss.
The formula below is taken from the code (the paper text could not be consulted here).

With n_c the training positives of class c, M the (C, C) co-occurrence counts of distinct
classes (zero diagonal), sigma the sigmoid, for sample i and class c:

- class weight      w_c = (1 - log(n_c / max_j n_j))^(1/3)  (1 for the most frequent class);
- co-occurrence     M~ = M / (column sums of M); a_i = y_i M~ / sum_j (y_i M~)_j, (C,): the
                    share of class c in the co-occurrence profile of sample i's positives;
- positives         p+ = sigma(z) (1 - a_ic);
- negatives         p- = min(1 - sigma(z) + clip, 1), times ``class_neg_scale`` (1.2) where
                    a_ic != 0, clipped at 1;
- entry             -w_c (1 - p+)^gamma_pos log(max(p+, eps))            (positive),
                    -w_c (1 - p-)^(gamma_neg + w_c) log(max(p-, eps))     (negative),
                    without the focusing factors when gamma_neg = gamma_pos = 0;
- reduction         the sum over all B x C entries (the authors' ``-loss.sum()``).

The focusing factors are constants for the gradient (``detach_focal_weight``, the code's
disable_torch_grad_focal_loss). Edge cases the code leaves as NaN get a finite value here:
a class that never co-occurs has a zero column in M~ (the code divides 0 by 0), and a sample
whose positives have no co-occurrence, or that has no positive, gets a_i = 0 (the code
takes a mean over an empty set or divides 0 by 0).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mlcnc.losses.base import LogitLossCriterion
from mlcnc.losses.reduction import ClassFreq, as_class_freq, prepare_logits, reduce_entries


def mfm_class_weights(class_freq: Tensor, power: float) -> Tensor:
    """w_c = (1 - log(n_c / max_j n_j))^power, (C,): 1 for the most frequent class, larger
    for rarer ones (the code's ``create_weight``, power 1/3)."""
    freq = class_freq.double()
    return (1.0 - torch.log(freq / freq.max())).pow(power).float()


def normalised_cooccurrence(cooccurrence: Tensor) -> Tensor:
    """M / column sums (M~_ij = M_ij / sum_k M_kj), (C, C); a zero column stays zero."""
    m = cooccurrence.double()
    column = m.sum(dim=0, keepdim=True)
    return torch.where(column > 0, m / column.clamp(min=1e-300), torch.zeros_like(m)).float()


def cooccurrence_attention(targets: Tensor, normalised: Tensor) -> Tensor:
    """a_i = y_i M~ / sum_j (y_i M~)_j, (B, C); 0 for a sample whose sum is 0.

    The code takes the mean of the rows of M~ of the positive classes and then normalises it
    to sum 1; the mean's 1/|positives| cancels in the normalisation, so this is the same.
    """
    raw = targets.float() @ normalised  # (B, C)
    total = raw.sum(dim=1, keepdim=True)
    return torch.where(total > 0, raw / total.clamp(min=torch.finfo(raw.dtype).tiny), 0.0)


def multi_focal_modifier_loss(
    logits: Tensor,
    targets: Tensor,
    class_weight: Tensor,
    normalised: Tensor,
    *,
    gamma_neg: float,
    gamma_pos: float,
    clip: float,
    class_neg_scale: float,
    eps: float,
    detach_focal_weight: bool,
    reduction: str,
) -> Tensor:
    """MFM (module docstring). logits, targets (B, C); class_weight (C,) from
    ``mfm_class_weights``; normalised (C, C) from ``normalised_cooccurrence``."""
    z, y = prepare_logits(logits, targets, "multi_focal_modifier_loss")
    num_classes = z.shape[1]
    if class_weight.shape != (num_classes,) or normalised.shape != (num_classes, num_classes):
        raise ValueError(
            f"multi_focal_modifier_loss: class_weight must be ({num_classes},) and the "
            f"co-occurrence ({num_classes}, {num_classes}); got {tuple(class_weight.shape)} "
            f"and {tuple(normalised.shape)}"
        )
    if not 0.0 <= clip < 1.0:
        raise ValueError(f"multi_focal_modifier_loss: clip must be in [0, 1), got {clip}")
    attention = cooccurrence_attention(y, normalised.float())  # (B, C), no gradient
    weight = class_weight.float().view(1, -1)
    p_pos = torch.sigmoid(z) * (1.0 - attention)
    p_neg = torch.sigmoid(-z)
    if clip > 0:
        p_neg = (p_neg + clip).clamp(max=1.0)
    p_neg = torch.where(attention == 0, p_neg, p_neg * class_neg_scale).clamp(max=1.0)
    positive = torch.log(p_pos.clamp(min=eps))
    negative = torch.log(p_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:  # as the code: no focusing at all when both are 0
        if gamma_pos > 0:
            w_pos = (1.0 - p_pos).pow(gamma_pos)
            positive = positive * (w_pos.detach() if detach_focal_weight else w_pos)
        w_neg = (1.0 - p_neg).pow(gamma_neg + weight)  # exponent gamma_neg + w_c >= 1
        negative = negative * (w_neg.detach() if detach_focal_weight else w_neg)
    loss = -weight * (y * positive + (1.0 - y) * negative)
    return reduce_entries(loss, reduction)


class MultiFocalModifierCriterion(LogitLossCriterion):
    """MFM with COMIC's settings; needs the training class counts and co-occurrence counts.

    cooccurrence: (C, C) counts of images positive for both classes, diagonal ignored
    (``mlcnc.data.cooccurrence.cooccurrence_counts(train_labels)``).
    With ``reduction="sum"`` (the authors') the per-process sum is multiplied by the DDP
    world size, as for ASL (``reduce_entries`` -> ``mlcnc.losses.distributed.global_sum``).
    """

    term = "mfm"

    def __init__(
        self,
        class_freq: ClassFreq,
        cooccurrence: Tensor | np.ndarray,
        *,
        gamma_neg: float,
        gamma_pos: float,
        clip: float,
        class_neg_scale: float,
        weight_power: float,
        eps: float,
        detach_focal_weight: bool,
        reduction: str,
    ) -> None:
        super().__init__()
        freq = as_class_freq(class_freq, "MultiFocalModifierCriterion")
        counts = torch.as_tensor(np.asarray(cooccurrence, dtype=np.float64))
        c = freq.numel()
        if counts.shape != (c, c):
            raise ValueError(
                f"MultiFocalModifierCriterion: cooccurrence must be ({c}, {c}) for {c} classes, "
                f"got {tuple(counts.shape)}"
            )
        if (counts < 0).any() or not torch.isfinite(counts).all():
            raise ValueError(
                "MultiFocalModifierCriterion: cooccurrence counts must be finite, >= 0"
            )
        if reduction not in ("sum", "mean"):
            raise ValueError(
                f"MultiFocalModifierCriterion: reduction must be 'sum' or 'mean', got {reduction!r}"
            )
        counts = counts.clone()
        counts.fill_diagonal_(0.0)
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip
        self.class_neg_scale, self.eps = class_neg_scale, eps
        self.detach_focal_weight, self.reduction = detach_focal_weight, reduction
        self.register_buffer("class_weight", mfm_class_weights(freq, weight_power))
        self.register_buffer("cooccurrence", normalised_cooccurrence(counts))

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        value = multi_focal_modifier_loss(
            logits, targets, self.class_weight, self.cooccurrence, gamma_neg=self.gamma_neg,
            gamma_pos=self.gamma_pos, clip=self.clip, class_neg_scale=self.class_neg_scale,
            eps=self.eps, detach_focal_weight=self.detach_focal_weight, reduction=self.reduction,
        )  # fmt: skip
        return value  # "sum": the global-batch sum via reduce_entries
