"""MFM, COMIC's multi-focal modifier loss (``mlcnc.losses.mfm``)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from mlcnc.losses.base import Criterion
from mlcnc.losses.mfm import MultiFocalModifierCriterion
from mlcnc.methods.linear import register_linear
from mlcnc.methods.registry import BuildRequest
from mlcnc.schema import Bool, Fraction, NonNegativeFloat, PositiveFloat, section


@section
class MFMOptions:
    """MFM, COMIC's multi-focal modifier (``losses/mfm.py``; COMIC's VOC config)."""

    gamma_neg: NonNegativeFloat = 3.0
    gamma_pos: NonNegativeFloat = 0.0
    clip: Fraction = 0.05
    class_neg_scale: PositiveFloat = 1.2
    weight_power: PositiveFloat = 1.0 / 3.0
    eps: PositiveFloat = 1e-8
    detach_focal_weight: Bool = True
    reduction: Literal["sum", "mean"] = "sum"


def mfm_criterion(request: BuildRequest) -> Criterion:
    from mlcnc.data.cooccurrence import cooccurrence_counts  # mlcnc.data imports the config

    counts = (
        cooccurrence_counts(request.train_labels)
        if request.train_labels is not None
        else np.zeros((request.num_classes, request.num_classes))  # restored from a checkpoint
    )
    return MultiFocalModifierCriterion(request.class_freq, counts, **request.loss)


register_linear(
    "mfm", "MFM", "random", MFMOptions, mfm_criterion,
    source="COMIC's multi-focal modifier (wannature/COMIC loss/PriorFocalModifierLoss.py)",
)  # fmt: skip
