"""The linear-head model of ERM and the loss baselines: backbone, global average pool, Linear."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mlcnc.models.backbone import create_backbone
from mlcnc.models.output import ModelOutput

CLASSIFIERS = ("linear", "cosine")


class LinearHeadModel(nn.Module):
    """Backbone -> global average pool -> dropout -> classifier -> logits (B, C).

    classifier: ``linear`` (an ``nn.Linear`` with bias: ERM and the loss baselines) or
    ``cosine`` (logits are cosines between the pooled feature and each class weight, in
    [-1, 1], no bias: LDAM's normalised classifier, whose loss applies the scale s).
    """

    def __init__(
        self,
        backbone: str,
        pretrained: bool | str,
        num_classes: int,
        dropout: float = 0.0,
        classifier: str = "linear",
    ) -> None:
        super().__init__()
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.backbone = create_backbone(backbone, pretrained)
        self.num_features: int = self.backbone.num_features
        self.num_classes = num_classes
        self.classifier_kind = classifier
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes, bias=classifier == "linear")

    def forward_features(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> pooled features (B, F)."""
        return self.backbone(images).mean(dim=(2, 3))

    def forward_head(self, features: Tensor) -> Tensor:
        """Pooled features (B, F) -> logits (B, C)."""
        features = self.dropout(features)
        if self.classifier_kind == "cosine":
            return F.linear(F.normalize(features, dim=1), F.normalize(self.fc.weight, dim=1))
        return self.fc(features)

    def forward(self, images: Tensor, return_attention: bool = False) -> ModelOutput:
        if return_attention:
            raise ValueError(
                "LinearHeadModel has no attention maps (it pools the backbone features); "
                "attention is available for MLC-NC models only"
            )
        return ModelOutput(logits=self.forward_head(self.forward_features(images)))
