"""BBN, the bilateral-branch network (Zhou et al., CVPR 2020), adapted to multi-label."""

from __future__ import annotations

from mlcnc.methods.registry import (
    BuildRequest,
    Method,
    MethodRecord,
    NoOptions,
    register_method,
)
from mlcnc.schema import Fraction, PositiveFloat, PositiveInt, section


@section
class BBNModelOptions:
    """BBN (Zhou et al., CVPR 2020): the mixed features doubled as BBN's code does, alpha 0.5
    at test time; alpha_epochs None = the run's optim.epochs. Needs a torchvision ResNet or a
    timm EfficientNet-family model."""

    feature_scale: PositiveFloat = 2.0
    test_alpha: Fraction = 0.5
    alpha_epochs: PositiveInt | None = None


def build_bbn(request: BuildRequest) -> Method:
    from mlcnc.losses.bbn import BBNCriterion  # imports the backbones (timm): lazy
    from mlcnc.models.bbn import BBNModel

    options = dict(request.model)
    alpha_epochs = options.pop("alpha_epochs") or request.epochs or 1
    model = BBNModel(
        request.num_classes,
        alpha_epochs,
        backbone=request.cfg.backbone,
        pretrained=request.cfg.pretrained,
        **options,
    )
    return Method(model=model, criterion=BBNCriterion(), sampler="paired_reversed")


register_method(
    MethodRecord(
        name="bbn", display_name="BBN", build=build_bbn, sampler="paired_reversed",
        model_options=BBNModelOptions, loss_options=NoOptions,
        source="Zhou et al., CVPR 2020; Megvii-Nanjing/BBN (combiner, network), BCE for multi-label",
    )
)  # fmt: skip
