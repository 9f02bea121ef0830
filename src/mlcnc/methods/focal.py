"""Focal: the sigmoid focal loss (Lin et al., ICCV 2017)."""

from __future__ import annotations

from mlcnc.losses.base import Criterion
from mlcnc.methods.linear import register_linear
from mlcnc.methods.registry import BuildRequest
from mlcnc.schema import Fraction, NonNegativeFloat, section


@section
class FocalOptions:
    """Focal loss (Lin et al., ICCV 2017): gamma 2, no alpha balancing."""

    gamma: NonNegativeFloat = 2.0
    alpha: Fraction | None = None


def focal_criterion(request: BuildRequest) -> Criterion:
    from mlcnc.losses.focal import FocalCriterion  # imports torchvision: lazy (mlcnc --help)

    return FocalCriterion(**request.loss)


register_linear(
    "focal", "Focal", "random", FocalOptions, focal_criterion, source="Lin et al., ICCV 2017"
)
