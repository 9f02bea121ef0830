"""The two-way loss (Kobayashi, CVPR 2023) on a linear head, with MLC-NC's sampler (so it
differs from MLC-NC only in the representation)."""

from __future__ import annotations

from mlcnc.losses.base import Criterion
from mlcnc.losses.two_way import TwoWayCriterion
from mlcnc.methods.linear import register_linear
from mlcnc.methods.registry import BuildRequest
from mlcnc.schema import PositiveFloat, section


@section
class TwoWayOptions:
    """The two-way loss (Kobayashi, CVPR 2023): Tp 4, Tn 1."""

    tp: PositiveFloat = 4.0
    tn: PositiveFloat = 1.0


def two_way_criterion(request: BuildRequest) -> Criterion:
    return TwoWayCriterion(**request.loss)


register_linear(
    "two_way", "Two-way (linear head)", "class_aware", TwoWayOptions, two_way_criterion,
    source="Kobayashi, CVPR 2023",
)  # fmt: skip
