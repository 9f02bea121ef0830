"""The linear-head model that the loss-only methods share, and their registration helper.

A loss-only method (ERM, RW, Focal, ...) is a backbone, a linear (or cosine) head on its
pooled feature and a criterion: its module defines the loss options and a criterion factory
and calls ``register_linear``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import Field

from mlcnc.losses.base import Criterion
from mlcnc.methods.registry import (
    BuildRequest,
    Method,
    MethodConfig,
    MethodRecord,
    SamplerKind,
    register_method,
)
from mlcnc.schema import Bool, Fraction, PositiveFloat, PositiveInt, section


@section
class LinearModelOptions:
    """The linear head on the pooled backbone feature (``models.linear``). DB's recipe sets
    neck_dim 256, dropout 0.5, frozen_stages 1, norm_eval, classifier_init_std 0.01
    (``configs/voc_lt_db.yaml``); frozen_stages / norm_eval need a torchvision ResNet."""

    dropout: Fraction = 0.0
    classifier: Literal["linear", "cosine"] = "linear"
    neck_dim: PositiveInt | None = None
    frozen_stages: Annotated[int, Field(ge=-1, le=4)] = -1
    norm_eval: Bool = False
    freeze_norm_affine: Bool = False
    classifier_init_std: PositiveFloat | None = None


@section
class CosineModelOptions(LinearModelOptions):
    """LDAM's head: a normalised (cosine) classifier (LDAM is defined on unit vectors)."""

    classifier: Literal["linear", "cosine"] = "cosine"


DB_RECIPE = {"voc_lt": "voc_lt_db", "coco_lt": "coco_lt_db"}
"""The DB paper's recipe (spec 7.5), published for DB, DB-Focal and CB-Focal on both
benchmarks."""

CriterionFactory = Callable[[BuildRequest], Criterion]
Finalize = Callable[[MethodConfig, dict[str, Any], dict[str, Any]], None]


def register_linear(
    name: str,
    display: str,
    sampler: SamplerKind,
    loss_options: type,
    criterion: CriterionFactory,
    *,
    model_options: type = LinearModelOptions,
    source: str = "",
    data_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    finalize: Finalize | None = None,
    needs_num_samples: bool = False,
    published: Mapping[str, str] | None = None,
) -> MethodRecord:
    """Register a linear-head method whose criterion ``criterion(request)`` builds."""

    def build(request: BuildRequest) -> Method:
        from mlcnc.models.linear import LinearHeadModel  # the backbones (timm): lazy

        head = LinearHeadModel(
            request.cfg.backbone, request.cfg.pretrained, request.num_classes, **request.model
        )
        return Method(model=head, criterion=criterion(request), sampler=sampler)

    return register_method(
        MethodRecord(
            name=name,
            display_name=display,
            build=build,
            sampler=sampler,
            model_options=model_options,
            loss_options=loss_options,
            data_defaults=data_defaults or {},
            finalize=finalize,
            needs_num_samples=needs_num_samples,
            source=source,
            published_configs=published or {},
        )
    )
