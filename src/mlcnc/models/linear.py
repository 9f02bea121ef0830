"""The linear-head model of ERM and the loss baselines: backbone, global average pool, Linear.

With the DB benchmark's options it is DB's ``SimpleClassifier`` (``DB: configs/voc/
LT_resnet50_pfc_DB.py``): ResNet with frozen_stages=1 and norm_eval, the ``PFC`` neck
(``DB: mllt/models/necks/pfc.py``: global average pool -> Linear 2048 -> 256 -> BatchNorm1d
-> Dropout 0.5, no ReLU) and ``ClsHead`` (``DB: mllt/models/heads/cls_head.py``: Linear
256 -> C initialised N(0, 0.01), bias 0):
``LinearHeadModel(..., dropout=0.5, neck_dim=256, frozen_stages=1, norm_eval=True,
classifier_init_std=0.01)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mlcnc.models.backbone import create_backbone
from mlcnc.models.output import ModelOutput

CLASSIFIERS = ("linear", "cosine")


class LinearHeadModel(nn.Module):
    """Backbone -> global average pool -> [neck] -> dropout -> classifier -> logits (B, C).

    classifier: ``linear`` (an ``nn.Linear`` with bias: ERM and the loss baselines) or
    ``cosine`` (logits are cosines between the pooled feature and each class weight, in
    [-1, 1], no bias: LDAM's normalised classifier, whose loss applies the scale s).
    neck_dim: None (no neck) or the width of DB's PFC neck, Linear(F, neck_dim) ->
    BatchNorm1d, whose Linear is initialised as DB's (Kaiming normal, fan_out, bias 0);
    ``dropout`` then follows the BatchNorm, as in the PFC neck.
    frozen_stages, norm_eval, freeze_norm_affine: backbone options (``TorchvisionResNet``).
    classifier_init_std: None keeps PyTorch's default init; a value draws the classifier
    weight from N(0, std^2) with bias 0 (DB's ClsHead: 0.01).
    """

    def __init__(
        self,
        backbone: str,
        pretrained: bool | str,
        num_classes: int,
        dropout: float = 0.0,
        classifier: str = "linear",
        neck_dim: int | None = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        freeze_norm_affine: bool = False,
        classifier_init_std: float | None = None,
    ) -> None:
        super().__init__()
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if neck_dim is not None and neck_dim < 1:
            raise ValueError(f"neck_dim must be a positive width or None, got {neck_dim}")
        self.backbone = create_backbone(
            backbone, pretrained, frozen_stages, norm_eval, freeze_norm_affine
        )
        self.num_features: int = self.backbone.num_features
        self.num_classes = num_classes
        self.classifier_kind = classifier
        self.neck: nn.Sequential | None = None
        head_in = self.num_features
        if neck_dim is not None:
            fc = nn.Linear(self.num_features, neck_dim)
            nn.init.kaiming_normal_(fc.weight, mode="fan_out")
            nn.init.zeros_(fc.bias)
            self.neck = nn.Sequential(fc, nn.BatchNorm1d(neck_dim))
            head_in = neck_dim
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(head_in, num_classes, bias=classifier == "linear")
        if classifier_init_std is not None:
            nn.init.normal_(self.fc.weight, 0.0, classifier_init_std)
            if self.fc.bias is not None:
                nn.init.zeros_(self.fc.bias)

    def forward_features(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> pooled features (B, F)."""
        return self.backbone(images).mean(dim=(2, 3))

    def forward_head(self, features: Tensor) -> Tensor:
        """Pooled features (B, F) -> logits (B, C)."""
        if self.neck is not None:
            features = self.neck(features)
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
