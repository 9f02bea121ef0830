"""LDAM (Cao et al., NeurIPS 2019) in multi-label form, on a cosine classifier: ``ldam``
without DRW (displayed "LDAM (no DRW)") and ``ldam_drw``, LDAM's headline recipe with the
deferred class-balanced re-weighting."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from mlcnc.losses.base import Criterion
from mlcnc.losses.ldam import LDAMCriterion
from mlcnc.methods.linear import CosineModelOptions, register_linear
from mlcnc.methods.registry import BuildRequest
from mlcnc.schema import Bool, PositiveFloat, section


@section
class LDAMOptions:
    """LDAM (Cao et al., NeurIPS 2019): margins up to 0.5, scale s = 30 (their code), on a
    cosine classifier as LDAM is defined on normalised features and weights. ``drw``:
    LDAM-DRW's deferred re-weighting (their ``cifar_train.py``: class-balanced weights with
    beta 0.9999 from epoch 160 of 200, ``drw_start`` 0.8 of optim.epochs); off here."""

    max_margin: PositiveFloat = 0.5
    scale: PositiveFloat = 30.0
    drw: Bool = False
    drw_start: Annotated[float, Field(ge=0, le=1)] = 0.8
    drw_beta: Annotated[float, Field(ge=0, lt=1)] = 0.9999


@section
class LDAMDRWOptions(LDAMOptions):
    """LDAM-DRW: LDAM with the deferred re-weighting on (its published recipe)."""

    drw: Bool = True


def drw_epoch(drw_start: float, epochs: int | None) -> int:
    """The first re-weighted epoch (0-based): round(drw_start x epochs)."""
    return round(drw_start * (epochs or 1))


def ldam_criterion(request: BuildRequest) -> Criterion:
    options = dict(request.loss)
    drw, start = options.pop("drw"), options.pop("drw_start")
    first = drw_epoch(start, request.epochs) if drw else None
    return LDAMCriterion(request.class_freq, drw_epoch=first, **options)


register_linear(
    "ldam", "LDAM (no DRW)", "random", LDAMOptions, ldam_criterion,
    model_options=CosineModelOptions,
    source="Cao et al., NeurIPS 2019 (multi-label form), without DRW",
)  # fmt: skip
register_linear(
    "ldam_drw", "LDAM-DRW", "random", LDAMDRWOptions, ldam_criterion,
    model_options=CosineModelOptions,
    source="Cao et al., NeurIPS 2019 (multi-label form); DRW: kaidic/LDAM-DRW cifar_train.py",
)  # fmt: skip
