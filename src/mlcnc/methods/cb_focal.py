"""CB-Focal: class-balanced focal loss (Cui et al., CVPR 2019) as DB's benchmark computes it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mlcnc.losses.base import Criterion
from mlcnc.losses.class_balanced_focal import ClassBalancedFocalCriterion
from mlcnc.methods.linear import DB_RECIPE, register_linear
from mlcnc.methods.registry import BuildRequest
from mlcnc.schema import NonNegativeFloat, PositiveFloat, section


@section
class ClassBalancedFocalOptions:
    """CB-Focal (Cui et al., CVPR 2019) as the LT-MLC benchmark's reference computes it (DB's
    ResampleLoss with reweight_func='CB': per-sample weights, beta 0.9, ``average_w``; the
    grid of the class-balanced paper is 0.9 / 0.99 / 0.999)."""

    beta: Annotated[float, Field(ge=0, lt=1)] = 0.9
    gamma: NonNegativeFloat = 2.0
    mode: Literal["average_w", "by_class", "average_n", "min_n"] = "average_w"
    balance_param: PositiveFloat = 2.0


def cb_focal_criterion(request: BuildRequest) -> Criterion:
    return ClassBalancedFocalCriterion(request.class_freq, **request.loss)


register_linear(
    "cb_focal", "CB-Focal", "random", ClassBalancedFocalOptions, cb_focal_criterion,
    source="Cui et al., CVPR 2019; DB repository mllt/models/losses/resample_loss.py (CB)",
    published=DB_RECIPE,
)  # fmt: skip
