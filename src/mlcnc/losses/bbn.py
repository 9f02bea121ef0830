"""BBN's loss (Zhou et al., CVPR 2020; ``mlcnc.models.bbn``): the cumulative-learning mix
of two BCE terms, with alpha from the model's paired output."""

from __future__ import annotations

from torch import Tensor

from mlcnc.losses.base import Criterion
from mlcnc.losses.bce import bce_loss
from mlcnc.models.branches import paired_targets
from mlcnc.models.output import ModelOutput


class BBNCriterion(Criterion):
    """alpha BCE(z, y_uniform) + (1 - alpha) BCE(z, y_reversed), BCE the mean over the
    global batch's B x C entries.

    alpha comes with the model's paired output (``BBNOutput.alpha``), so model and loss use
    the same value. Terms: ``total``, ``bce_uniform``, ``bce_reversed`` (unweighted).
    """

    def forward(self, output: ModelOutput, targets: Tensor) -> dict[str, Tensor]:
        alpha = getattr(output, "alpha", None)
        if alpha is None:
            raise ValueError(
                "BBNCriterion needs BBNModel's paired training output (images (B, 2, 3, H, W)); "
                "got an output without alpha"
            )
        y_uniform, y_reversed = paired_targets(targets, "BBNCriterion")
        z = output.logits.float()
        uniform = bce_loss(z, y_uniform)  # means over the global batch (losses.distributed)
        reversed_ = bce_loss(z, y_reversed)
        total = alpha * uniform + (1.0 - alpha) * reversed_
        return {"total": total, "bce_uniform": uniform, "bce_reversed": reversed_}
