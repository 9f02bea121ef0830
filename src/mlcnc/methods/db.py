"""DB and DB-Focal, the distribution-balanced loss (Wu et al., ECCV 2020).

"db_focal" is the DB repository's configuration (spec 7.4; ``focal=True``); "db" is the same
without the focal term. Both take the per-dataset ``preset`` (``voc``: lambda 5, mu 0.3;
``coco``: lambda 2, mu 0.2), chosen from ``data.name`` unless given, and the number of
training images (``num_samples``, from the training split unless given). Both are defined
with class-aware sampling.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from mlcnc.losses.base import Criterion
from mlcnc.losses.distribution_balanced import (
    DB_PRESETS,
    DBParams,
    DistributionBalancedCriterion,
)
from mlcnc.methods.linear import DB_RECIPE, CriterionFactory, register_linear
from mlcnc.methods.registry import BuildRequest, MethodConfig
from mlcnc.schema import ConfigError, NonNegativeFloat, PositiveFloat, PositiveInt, section


@section
class DBOptions:
    """DB (Wu et al., ECCV 2020; DB repository's configs, spec 7.4). ``preset`` gives the
    per-dataset values (voc or coco, ``losses.distribution_balanced.DB_PRESETS``); set values
    override it. num_samples: None = the training split's size."""

    preset: Literal["voc", "coco"] = "voc"
    map_alpha: float | None = None
    map_beta: float | None = None
    map_mu: float | None = None
    neg_scale: PositiveFloat | None = None
    init_bias: float | None = None
    num_samples: PositiveInt | None = None


@section
class DBFocalOptions(DBOptions):
    """DB-Focal: DB plus the focal term (gamma 2, balance_param 2; DB's configs)."""

    gamma: NonNegativeFloat = 2.0
    balance_param: PositiveFloat = 2.0


DB_PRESET_OF_DATA: dict[str, dict[str, Any]] = {
    "voc_lt": {"preset": "voc"},
    "coco_lt": {"preset": "coco"},
}
"""DB's per-dataset parameters (spec 7.4) for each benchmark; other data take ``voc``."""


def finalize_db(cfg: MethodConfig, model: dict[str, Any], loss: dict[str, Any]) -> None:
    """Write the preset's values into the options that are not set."""
    preset = dataclasses.asdict(DB_PRESETS[loss["preset"]])
    for key, value in preset.items():
        if loss.get(key) is None:
            loss[key] = value


def pop_db_params(request: BuildRequest, options: dict[str, Any]) -> tuple[int, DBParams]:
    """N (``method.loss.num_samples`` or the training set's size) and DB's parameters,
    popped from a copy of the loss ``options`` with its ``preset`` (resolved by
    ``finalize_db``); what is left are the criterion's other options."""
    size = options.pop("num_samples") or request.num_samples
    if size is None:
        raise ConfigError(
            f"method {request.cfg.name!r} needs the number of training images: pass "
            "build_method(..., num_samples=N) or set method.loss.num_samples"
        )
    options.pop("preset")
    params = DBParams(**{f.name: options.pop(f.name) for f in dataclasses.fields(DBParams)})
    return int(size), params


def db_criterion(focal: bool) -> CriterionFactory:
    def make(request: BuildRequest) -> Criterion:
        options = dict(request.loss)
        size, params = pop_db_params(request, options)
        return DistributionBalancedCriterion(
            request.class_freq, size, params, focal=focal, **options
        )

    return make


for _name, _display, _options, _focal, _source in (
    ("db", "DB", DBOptions, False,
     "Wu et al., ECCV 2020, without the focal term (DB repository's configuration)"),
    ("db_focal", "DB-Focal", DBFocalOptions, True,
     "Wu et al., ECCV 2020 (DB repository's configuration)"),
):  # fmt: skip
    register_linear(
        _name, _display, "class_aware", _options, db_criterion(focal=_focal),
        data_defaults=DB_PRESET_OF_DATA, finalize=finalize_db, needs_num_samples=True,
        source=_source, published=DB_RECIPE,
    )  # fmt: skip
