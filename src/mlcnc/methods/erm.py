"""ERM (plain BCE) and RS (BCE with class-aware sampling)."""

from __future__ import annotations

from mlcnc.losses.base import Criterion
from mlcnc.losses.bce import BCECriterion
from mlcnc.methods.linear import register_linear
from mlcnc.methods.registry import BuildRequest, NoOptions


def bce_criterion(request: BuildRequest) -> Criterion:
    return BCECriterion()


register_linear("erm", "ERM", "random", NoOptions, bce_criterion, source="plain BCE")
register_linear(
    "rs", "RS", "class_aware", NoOptions, bce_criterion, source="BCE, class-aware sampling"
)
