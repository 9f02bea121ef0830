"""LDAM (Cao et al., NeurIPS 2019) in multi-label form, on a cosine classifier."""

from __future__ import annotations

from mlcnc.losses.base import Criterion
from mlcnc.losses.ldam import LDAMCriterion
from mlcnc.methods.linear import CosineModelOptions, register_linear
from mlcnc.methods.registry import BuildRequest
from mlcnc.schema import PositiveFloat, section


@section
class LDAMOptions:
    """LDAM (Cao et al., NeurIPS 2019): margins up to 0.5, scale s = 30 (their code), on a
    cosine classifier as LDAM is defined on normalised features and weights."""

    max_margin: PositiveFloat = 0.5
    scale: PositiveFloat = 30.0


def ldam_criterion(request: BuildRequest) -> Criterion:
    return LDAMCriterion(request.class_freq, **request.loss)


register_linear(
    "ldam", "LDAM", "random", LDAMOptions, ldam_criterion, model_options=CosineModelOptions,
    source="Cao et al., NeurIPS 2019 (multi-label form)",
)  # fmt: skip
