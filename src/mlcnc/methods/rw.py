"""RW: BCE re-weighted by inverse class frequency."""

from __future__ import annotations

from typing import Literal

from mlcnc.losses.base import Criterion
from mlcnc.losses.bce import ReweightedBCECriterion
from mlcnc.methods.linear import register_linear
from mlcnc.methods.registry import BuildRequest
from mlcnc.schema import section


@section
class ReweightOptions:
    """RW: w_c proportional to n_c^-1/2 (``sqrt_inv``) or n_c^-1 (``inv``), mean 1 (a choice
    fixed before any run)."""

    mode: Literal["sqrt_inv", "inv"] = "sqrt_inv"


def rw_criterion(request: BuildRequest) -> Criterion:
    return ReweightedBCECriterion(request.class_freq, **request.loss)


register_linear(
    "rw", "RW", "random", ReweightOptions, rw_criterion, source="BCE, inverse-frequency weights"
)
