"""ML-GCN (Chen et al., CVPR 2019): a GCN over the label graph gives the classifiers."""

from __future__ import annotations

from typing import Literal

import numpy as np

from mlcnc.losses.bce import BCECriterion
from mlcnc.methods.registry import (
    BuildRequest,
    Method,
    MethodRecord,
    NoOptions,
    register_method,
)
from mlcnc.schema import Fraction, NonNegativeFloat, PositiveInt, Str, section


@section
class MLGCNModelOptions:
    """ML-GCN (Chen et al., CVPR 2019): tau 0.4, p 0.2 (Eq. 8 as corrected in their README),
    1024 hidden, LeakyReLU 0.2, max pooling; node features one-hot (no word vectors can be
    downloaded), ``etf``, or a C x d .npy / .txt / .csv file of class-name embeddings."""

    tau: Fraction = 0.4
    p: Fraction = 0.2
    self_weight: Fraction | None = None
    node_features: Str = "onehot"
    hidden_dim: PositiveInt = 1024
    negative_slope: NonNegativeFloat = 0.2
    pooling: Literal["max", "avg"] = "max"


MLGCN_RECIPE = {"voc_lt": "voc_lt_mlgcn", "coco_lt": "coco_lt_mlgcn"}
"""ML-GCN's own multi-label recipe (published for VOC 2007 / MS-COCO), on both benchmarks."""


def build_mlgcn(request: BuildRequest) -> Method:
    from mlcnc.models.mlgcn import MLGCNModel, mlgcn_correlation  # backbones (timm): lazy

    options = dict(request.model)
    graph = {k: options.pop(k) for k in ("tau", "p", "self_weight")}
    if request.train_labels is not None:
        correlation = mlgcn_correlation(request.train_labels, **graph)
    else:  # a trained model is rebuilt: its checkpoint restores the adjacency buffer
        correlation = np.eye(request.num_classes)
    model = MLGCNModel(
        request.num_classes,
        correlation,
        backbone=request.cfg.backbone,
        pretrained=request.cfg.pretrained,
        **options,
    )
    return Method(model=model, criterion=BCECriterion(), sampler="random")


register_method(
    MethodRecord(
        name="mlgcn", display_name="ML-GCN", build=build_mlgcn, sampler="random",
        model_options=MLGCNModelOptions, loss_options=NoOptions,
        source="Chen et al., CVPR 2019; megvii-research/ML-GCN (gen_A, gen_adj)",
        published_configs=MLGCN_RECIPE,
    )
)  # fmt: skip
