"""OLTR, dynamic meta-embedding with modulated attention (Liu et al., CVPR 2019), read for
multi-label (``mlcnc.models.oltr``, ``mlcnc.losses.oltr``; choices in
``docs/baselines_reference.md``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from mlcnc.methods.registry import BuildRequest, Method, MethodRecord, register_method
from mlcnc.schema import NonNegativeFloat, PositiveFloat, PositiveInt, section


@section
class OLTRModelOptions:
    """OLTR's network (its code): direct feature 512 wide (``feature_dim``), cosine-norm
    scale 16, reachability scale 10, spatial attention on 7 x 7 positions."""

    feature_dim: PositiveInt = 512
    cosine_scale: PositiveFloat = 16.0
    reachability_scale: PositiveFloat = 10.0
    attention_size: PositiveInt = 7


@section
class OLTRLossOptions:
    """OLTR's two stages and centroid loss: stage 2 (meta-embedding, centroid loss) from
    ``stage2_start`` x optim.epochs (1/3: ImageNet-LT's 30 + 60 epochs; at least epoch 1),
    centroid loss weight 0.01, repelling weight 0.01 and margin 10 (``DiscCentroidsLoss``)."""

    stage2_start: Annotated[float, Field(gt=0, lt=1)] = 1 / 3
    feature_weight: NonNegativeFloat = 0.01
    repel_weight: NonNegativeFloat = 0.01
    margin: NonNegativeFloat = 10.0


def stage2_epoch(stage2_start: float, epochs: int | None) -> int:
    """The first stage-2 epoch (0-based): round(stage2_start x epochs), at least 1."""
    return max(1, round(stage2_start * (epochs or 1)))


def build_oltr(request: BuildRequest) -> Method:
    from mlcnc.losses.oltr import OLTRCriterion  # imports the backbones (timm): lazy
    from mlcnc.models.oltr import OLTRModel

    model = OLTRModel(
        request.num_classes,
        backbone=request.cfg.backbone,
        pretrained=request.cfg.pretrained,
        **request.model,
    )
    loss = dict(request.loss)
    first = stage2_epoch(loss.pop("stage2_start"), request.epochs)
    criterion = OLTRCriterion(request.num_classes, model.feature_dim, first, **loss).bind(model)
    return Method(model=model, criterion=criterion, sampler="class_aware")


register_method(
    MethodRecord(
        name="oltr", display_name="OLTR", build=build_oltr, sampler="class_aware",
        model_options=OLTRModelOptions, loss_options=OLTRLossOptions,
        source="Liu et al., CVPR 2019; zhmiao/OpenLongTailRecognition-OLTR, multi-label reading "
        "(docs/baselines_reference.md)",
    )
)  # fmt: skip
