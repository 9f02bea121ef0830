"""URS, collaborative training on uniform and re-balanced samplings (Guo and Wang, CVPR 2021)."""

from __future__ import annotations

from mlcnc.methods.registry import BuildRequest, Method, MethodRecord, register_method
from mlcnc.schema import Bool, NonNegativeFloat, Str, section


@section
class URSModelOptions:
    """URS (Guo and Wang, CVPR 2021): logit compensation on (see ``models/urs.py`` for what
    the paper leaves open). Needs a torchvision ResNet or a timm EfficientNet-family model."""

    compensation: Bool = True


@section
class URSLossOptions:
    """URS's Eq. (1): lambda 0.1 for the cross-branch consistency (a documented choice)."""

    consistency_weight: NonNegativeFloat = 0.1
    consistency: Str = "mse_prob"


def build_urs(request: BuildRequest) -> Method:
    from mlcnc.losses.urs import URSCriterion  # imports the backbones (timm): lazy
    from mlcnc.models.urs import URSModel

    model = URSModel(
        request.num_classes,
        backbone=request.cfg.backbone,
        pretrained=request.cfg.pretrained,
        **request.model,
    )
    return Method(model=model, criterion=URSCriterion(**request.loss), sampler="paired_class_aware")


register_method(
    MethodRecord(
        name="urs", display_name="URS", build=build_urs, sampler="paired_class_aware",
        model_options=URSModelOptions, loss_options=URSLossOptions,
        source="Guo and Wang, CVPR 2021 (Eq. 1-2; unspecified parts: models/urs.py)",
    )
)  # fmt: skip
