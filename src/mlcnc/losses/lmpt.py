"""LMPT's losses (Xia et al., ALVR 2024; ``richard-peng-xia/LMPT`` @ aab39ca, vlm-spec 1.2):
total = lam * L_cls(logits, y) + (1 - lam) * L_cse(caption / prompt distances, y).

- ``csel_loss``: the class-specific embedding loss (``lmpt/csel.py``
  ``SoftMarginHingeEmbeddingLoss``, inputs as ``lmpt/train.py`` builds them), in its
  *corrected* form: raw class counts, weights normalised over classes (issue #7's fix of
  ``dim=2``). The released call passes ``softmax(class_freq)``, which underflows to 0 for all
  but the largest count (infinite margins, NaN weights; issues #5 / #7): refused here.
- ``dbl_lmpt_loss``: LMPT's copy of DB's ``ResampleLoss`` (``lmpt/dbl.py``): its
  ``binary_cross_entropy`` always reduces by the mean, so the focal factor
  (1 - exp(-mean BCE))^gamma is one batch scalar, not per entry as in DB (``db_focal``).
- ``asl_mean``: ``lmpt/asl.py`` ``AsymmetricLossOptimized(gamma_neg=4, gamma_pos=0,
  clip=0.05, disable_torch_grad_focal_loss=True)`` reduced by the mean over B*C: mlcnc's
  ``asymmetric_loss(..., reduction="mean")``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mlcnc.losses.asymmetric import asymmetric_loss
from mlcnc.losses.base import Criterion
from mlcnc.losses.distributed import gather_stack, global_entry_mean
from mlcnc.losses.distribution_balanced import (
    DBParams,
    distribution_balanced_loss,
    negative_tolerant_bias,
    rebalance_weights,
)
from mlcnc.losses.reduction import ClassFreq, as_class_freq, prepare_logits
from mlcnc.models.output import ModelOutput

ClsLoss = Literal["dbl_lmpt", "db_focal", "asl_mean"]
CselScore = Literal["distance", "similarity"]
LMPT_ASL = {"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05, "eps": 1e-8,
            "detach_focal_weight": True}  # fmt: skip
"""``lmpt/train.py``'s ``AsymmetricLossOptimized`` (eps: the class default)."""

SOFTMAX_COUNTS_REFUSED = (
    "csel_counts='softmax' (LMPT's train.py passes softmax(class_freq) to the CSEL) is "
    "refused: the softmax underflows to 0 for every class but the largest (VOC-LT: 19 of 20), "
    "so the margins are infinite and the weights NaN (LMPT issues #5 and #7); use "
    "csel_counts='raw' (the raw class counts, the maintainer's example in issue #4)"
)


def csel_loss(
    distances: Tensor,
    targets: Tensor,
    class_counts: Tensor | None,
    *,
    margin: float,
    gamma: float,
    score: CselScore = "distance",
    reduction: str = "mean",
) -> Tensor:
    """CSEL, LMPT's class-specific embedding loss (corrected form, vlm-spec 1.2).

    distances: (B, C, T) x_bct = 1 - cos(caption token embedding_b,t, prompt_c,t+m);
    targets (B, C) in {0, 1}; class_counts (C,) raw training counts n_c or None.
    y_bc = 2 t_bc - 1; s_bc = sum_t x_bct y_bc (``score="similarity"`` reads 1 - x instead);
    m_c = margin / n_c^(1/4); h_bc = relu(m_c - s_bc); w_c = n_c^-gamma / sum_k n_k^-gamma;
    entries h_bc w_c, reduced by the mean over the global batch's B*C (``"none"``: (B, C)).
    Without counts: m_c = margin and w_c = 1 (the module's ``class_counts=None`` branch).
    """
    x = distances.float()
    if x.dim() != 3 or x.shape[:2] != targets.shape:
        raise ValueError(
            f"csel_loss: distances must be (B, C, T) with targets (B, C), got "
            f"{tuple(x.shape)} and {tuple(targets.shape)}"
        )
    if score == "similarity":
        x = 1.0 - x
    sign = 2.0 * targets.float() - 1.0  # (B, C)
    summed = x.sum(dim=2) * sign  # sum_t x_bct y_bct: y does not depend on t
    if class_counts is None:
        loss = torch.relu(margin - summed)
    else:
        counts = class_counts.float().view(1, -1)
        hinge = torch.relu(margin / counts.pow(0.25) - summed)
        inverse = counts.pow(-gamma)
        loss = hinge * inverse / inverse.sum()
    if reduction == "none":
        return loss
    if reduction != "mean":
        raise ValueError(f"csel_loss: reduction must be 'mean' or 'none', got {reduction!r}")
    return global_entry_mean(loss)


def dbl_lmpt_loss(
    logits: Tensor,
    targets: Tensor,
    class_freq: Tensor,
    num_samples: int,
    params: DBParams,
    *,
    gamma: float,
    balance_param: float,
) -> Tensor:
    """LMPT's DB copy (``lmpt/dbl.py`` ``ResampleLoss``, focal, rebalance weights, logit_reg).

    The logits are shifted and scaled as DB's (z'' = z + bias_c, times lambda on negatives;
    weight w' = w, w / lambda on negatives: ``distribution_balanced``), then
    bce = mean_{b,c} BCE(z'', y), wbce = mean_{b,c} w' BCE(z'', y) over the global batch and
    L = balance_param (1 - exp(-bce))^gamma wbce: one batch-level focal factor (with
    gradient). Under DDP every process gathers the two sums and the count, so each returns
    the global value (``gather_stack``: exact gradients after DDP's average).
    """
    z, y = prepare_logits(logits, targets, "dbl_lmpt_loss")
    weight = rebalance_weights(y, class_freq, params.map_alpha, params.map_beta, params.map_mu)
    bias = negative_tolerant_bias(class_freq, num_samples, params.neg_scale, params.init_bias)
    scale = y + (1.0 - y) * params.neg_scale
    entry = F.binary_cross_entropy_with_logits((z + bias.view(1, -1)) * scale, y, reduction="none")
    local = torch.stack(
        [entry.sum(), (weight / scale * entry).sum(), entry.new_tensor(entry.numel())]
    )
    total = gather_stack(local).sum(dim=0)
    count = total[2].detach().clamp(min=1.0)
    bce, wbce = total[0] / count, total[1] / count
    return balance_param * (1.0 - torch.exp(-bce)).pow(gamma) * wbce


class LMPTCriterion(Criterion):
    """Terms ``cls`` (``cls_loss``) and ``cse`` (CSEL); total = lam cls + (1 - lam) cse.

    The CSEL reads ``output.csel_distances`` (B, C, T) (``mlcnc.models.lmpt.LMPTOutput``, given
    in training when the model has captions and the images' sample indices). An output
    without them (evaluation, or a model trained with ``lam=1``) has ``cse`` = 0.
    """

    def __init__(
        self,
        class_freq: ClassFreq,
        num_samples: int,
        params: DBParams,
        *,
        lam: float,
        cls_loss: ClsLoss,
        gamma: float,
        balance_param: float,
        csel_margin: float,
        csel_gamma: float,
        csel_counts: Literal["raw", "softmax"],
        csel_score: CselScore,
    ) -> None:
        super().__init__()
        if csel_counts != "raw":
            raise ValueError(SOFTMAX_COUNTS_REFUSED)
        if cls_loss not in ("dbl_lmpt", "db_focal", "asl_mean"):
            raise ValueError(f"LMPTCriterion: unknown cls_loss {cls_loss!r}")
        self.register_buffer("class_freq", as_class_freq(class_freq, "LMPTCriterion", num_samples))
        self.num_samples, self.params = int(num_samples), params
        self.lam, self.cls_loss = lam, cls_loss
        # dbl_lmpt's focal factor is one scalar of the whole batch's mean cross-entropy.
        self.batch_level = cls_loss == "dbl_lmpt"
        self.gamma, self.balance_param = gamma, balance_param
        self.csel_margin, self.csel_gamma, self.csel_score = csel_margin, csel_gamma, csel_score

    def classification(self, logits: Tensor, targets: Tensor) -> Tensor:
        """L_cls of the (B, C) logits."""
        if self.cls_loss == "asl_mean":
            return asymmetric_loss(logits, targets, reduction="mean", **LMPT_ASL)
        if self.cls_loss == "db_focal":
            return distribution_balanced_loss(
                logits, targets, self.class_freq, self.num_samples, self.params,
                focal=True, gamma=self.gamma, balance_param=self.balance_param,
            )  # fmt: skip
        return dbl_lmpt_loss(
            logits, targets, self.class_freq, self.num_samples, self.params,
            gamma=self.gamma, balance_param=self.balance_param,
        )  # fmt: skip

    def forward(self, output: ModelOutput, targets: Tensor) -> dict[str, Tensor]:
        cls = self.classification(output.logits, targets)
        distances = getattr(output, "csel_distances", None)
        if distances is None:
            cse = cls.new_zeros(())
        else:
            cse = csel_loss(
                distances, targets, self.class_freq,
                margin=self.csel_margin, gamma=self.csel_gamma, score=self.csel_score,
            )  # fmt: skip
        return {"total": self.lam * cls + (1.0 - self.lam) * cse, "cls": cls, "cse": cse}
