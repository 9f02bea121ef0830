"""MLCNCLoss: alpha*L_FLA + beta*L_FPC + L_TW with MLC-NC's warm-up and prototype memory."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mlcnc.losses.base import AllReduce, Criterion
from mlcnc.losses.functional import (
    FPC_REDUCTIONS,
    collapse_calibration_loss,
    feature_label_alignment_loss,
    two_way_loss,
)
from mlcnc.models.output import ModelOutput
from mlcnc.recipes import get_recipe
from mlcnc.schema import Bool, NonNegativeFloat, NonNegativeInt, PositiveFloat, section

PROTOTYPE_MODES = ("per_epoch", "cumulative")


@section
class MLCNCLossOptions:
    """MLCNCLoss's options (paper section 4.1 and spec 2.4: alpha 0.5, beta 0.1, tau 0.5,
    Tp 4, Tn 1, 5 warm-up epochs). legacy_warmup / prototype_mode: None = the recipe's."""

    alpha: NonNegativeFloat = 0.5
    beta: NonNegativeFloat = 0.1
    tau1: PositiveFloat = 0.5
    tau2: PositiveFloat | None = None
    tp: PositiveFloat = 4.0
    tn: PositiveFloat = 1.0
    warmup_epochs: NonNegativeInt = 5
    legacy_warmup: Bool | None = None
    prototype_mode: Literal["per_epoch", "cumulative"] | None = None
    fpc_reduction: Literal["positive_mean", "per_sample"] = "positive_mean"


DEFAULTS = MLCNCLossOptions()
"""The one place MLCNCLoss's defaults are written (``method.loss`` of the MLC-NC family)."""


class MLCNCLoss(Criterion):
    """MLC-NC's criterion (spec A1, B2-B3). ``forward`` returns total, fla, fpc, tw.

    Epochs < ``warmup_epochs`` train L_FLA alone (weight 1); later ones
    alpha*L_FLA + beta*L_FPC + L_TW. With ``legacy_warmup`` the warm-up total is
    1*FLA + 0*FPC + 0*TW with the zero terms in the graph (the code's behaviour, spec B0.2);
    without it FPC and TW are not computed in warm-up and reported as 0.

    Prototype memory (buffers, so ``state_dict`` carries it): while training, each forward
    adds the detached positive projections to ``epoch_sums`` (C, P) and ``epoch_counts`` (C,).
    ``end_epoch`` sums them over ranks and sets ``prototypes`` (C, P) from this epoch alone
    (``per_epoch``: the paper's mu_{t-1}) or from all epochs so far (``cumulative``: the
    code's). A class with no positive keeps its previous prototype; ``prototype_valid`` (C,)
    marks classes that have one, and L_FPC leaves the others out of its softmax. Before any
    prototype exists (the first epoch), L_FPC is 0.

    Under DDP every term is the global batch's (``mlcnc.losses.distributed``): L_FLA and
    L_FPC divide by global counts and L_TW is computed on the gathered logits, so the mean
    over processes of each returned value and of the parameter gradients is what one
    process gives on the whole batch. ``forward`` is then a collective on every process.
    """

    batch_level = True  # L_TW's log-sum-exp over the batch; L_FPC's mean over its positives

    def __init__(
        self,
        num_classes: int,
        proj_dim: int = 20,
        recipe: str = "paper",
        *,
        alpha: float = DEFAULTS.alpha,
        beta: float = DEFAULTS.beta,
        tau1: float = DEFAULTS.tau1,
        tau2: float | None = DEFAULTS.tau2,
        tp: float = DEFAULTS.tp,
        tn: float = DEFAULTS.tn,
        warmup_epochs: int = DEFAULTS.warmup_epochs,
        legacy_warmup: bool | None = DEFAULTS.legacy_warmup,
        prototype_mode: str | None = DEFAULTS.prototype_mode,
        fpc_reduction: str = DEFAULTS.fpc_reduction,
    ) -> None:
        super().__init__()
        defaults = get_recipe(recipe)
        self.legacy_warmup = defaults.legacy_warmup if legacy_warmup is None else legacy_warmup
        self.prototype_mode = prototype_mode or defaults.prototype_mode
        if self.prototype_mode not in PROTOTYPE_MODES:
            raise ValueError(
                f"prototype_mode must be one of {PROTOTYPE_MODES}, got {prototype_mode!r}"
            )
        if fpc_reduction not in FPC_REDUCTIONS[:2]:
            raise ValueError(
                f"fpc_reduction must be one of {FPC_REDUCTIONS[:2]}, got {fpc_reduction!r}"
            )
        self.num_classes, self.proj_dim = num_classes, proj_dim
        self.alpha, self.beta = alpha, beta
        self.tau1, self.tau2, self.tp, self.tn = tau1, tau2, tp, tn
        self.warmup_epochs = warmup_epochs
        self.fpc_reduction = fpc_reduction
        self.epoch = 0
        self.register_buffer("epoch_sums", torch.zeros(num_classes, proj_dim))
        self.register_buffer("epoch_counts", torch.zeros(num_classes))
        self.register_buffer("cumulative_sums", torch.zeros(num_classes, proj_dim))
        self.register_buffer("cumulative_counts", torch.zeros(num_classes))
        self.register_buffer("prototypes", torch.zeros(num_classes, proj_dim))
        self.register_buffer("prototype_valid", torch.zeros(num_classes, dtype=torch.bool))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def in_warmup(self) -> bool:
        return self.epoch < self.warmup_epochs

    def forward(self, output: ModelOutput, targets: Tensor) -> dict[str, Tensor]:
        if (
            output.class_features is None
            or output.projections is None
            or output.label_embeddings is None
        ):
            raise ValueError(
                "MLCNCLoss needs class_features, projections and label_embeddings (an MLCNC model)"
            )
        expected = (self.num_classes, self.proj_dim)
        if tuple(output.projections.shape[1:]) != expected or targets.shape != output.logits.shape:
            raise ValueError(
                f"MLCNCLoss(num_classes={self.num_classes}, proj_dim={self.proj_dim}) got "
                f"projections {tuple(output.projections.shape)}, logits "
                f"{tuple(output.logits.shape)} and targets {tuple(targets.shape)}"
            )
        if self.training:
            self._accumulate(output.projections, targets)
        fla = feature_label_alignment_loss(output.class_features, output.label_embeddings, targets)
        if self.in_warmup and not self.legacy_warmup:
            zero = torch.zeros((), device=fla.device)
            return {"total": fla, "fla": fla, "fpc": zero, "tw": zero.clone()}
        fpc = collapse_calibration_loss(
            output.projections,
            self.prototypes,
            targets,
            tau1=self.tau1,
            tau2=self.tau2,
            reduction=self.fpc_reduction,
            valid=self.prototype_valid,
        )
        tw = two_way_loss(output.logits, targets, tp=self.tp, tn=self.tn)
        if self.in_warmup:
            total = 1.0 * fla + 0.0 * fpc + 0.0 * tw
        else:
            total = self.alpha * fla + self.beta * fpc + tw
        return {"total": total, "fla": fla, "fpc": fpc, "tw": tw}

    @torch.no_grad()
    def _accumulate(self, projections: Tensor, targets: Tensor) -> None:
        """Add the positive projections (B, C, P) of this batch to the epoch's sums."""
        positive = (targets > 0).float()
        self.epoch_sums += torch.einsum("bc,bcp->cp", positive, projections.detach().float())
        self.epoch_counts += positive.sum(dim=0)

    @torch.no_grad()
    def end_epoch(self, all_reduce: AllReduce | None = None) -> None:
        """Sum this epoch's sums and counts over ranks, update the prototypes, reset the sums."""
        packed = torch.cat([self.epoch_sums, self.epoch_counts[:, None]], dim=1)
        if all_reduce is not None:
            reduced = all_reduce(packed)
            packed = packed if reduced is None else reduced  # tolerate in-place all-reduces
        sums, counts = packed[:, :-1], packed[:, -1]
        if self.prototype_mode == "cumulative":
            self.cumulative_sums += sums
            self.cumulative_counts += counts
            sums, counts = self.cumulative_sums, self.cumulative_counts
        seen = counts > 0
        means = sums / counts.clamp(min=1)[:, None]
        self.prototypes.copy_(torch.where(seen[:, None], means, self.prototypes))
        self.prototype_valid |= seen
        self.epoch_sums.zero_()
        self.epoch_counts.zero_()
