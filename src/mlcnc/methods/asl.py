"""ASL, the asymmetric loss (Ridnik et al., ICCV 2021)."""

from __future__ import annotations

from typing import Literal

from mlcnc.losses.asymmetric import AsymmetricCriterion
from mlcnc.losses.base import Criterion
from mlcnc.methods.linear import register_linear
from mlcnc.methods.registry import BuildRequest
from mlcnc.schema import Bool, Fraction, NonNegativeFloat, PositiveFloat, section


@section
class AsymmetricOptions:
    """ASL (Ridnik et al., ICCV 2021): the authors' training script's gamma_neg 4,
    gamma_pos 0, clip 0.05."""

    gamma_neg: NonNegativeFloat = 4.0
    gamma_pos: NonNegativeFloat = 0.0
    clip: Fraction = 0.05
    eps: PositiveFloat = 1e-8
    detach_focal_weight: Bool = True
    reduction: Literal["sum", "mean"] = "sum"


ASL_RECIPE = {"voc_lt": "voc_lt_asl", "coco_lt": "coco_lt_asl"}
"""ASL's own multi-label recipe (published for MS-COCO, ``train.py``), on both benchmarks."""


def asl_criterion(request: BuildRequest) -> Criterion:
    return AsymmetricCriterion(**request.loss)


register_linear(
    "asl", "ASL", "random", AsymmetricOptions, asl_criterion,
    source="Ridnik et al., ICCV 2021; Alibaba-MIIL/ASL losses.py, train.py",
    published=ASL_RECIPE,
)  # fmt: skip
