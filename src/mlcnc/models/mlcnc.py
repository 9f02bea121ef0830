"""The MLC-NC model (Tao et al., AAAI 2025): a backbone and the MLC-NC head."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from mlcnc.models.backbone import create_backbone
from mlcnc.models.head import MLCNCHead
from mlcnc.models.output import ModelOutput
from mlcnc.recipes import get_recipe


class MLCNC(nn.Module):
    """Backbone -> tokens -> ETF-query attention -> per-class projections -> ETF classifier.

    ``forward(images)`` gives logits (B, C), class features (B, C, E), unit projections
    (B, C, P) and the label queries (C, E); attention (B, C, N) when asked.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, **head_options: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = backbone.num_features
        self.head = MLCNCHead(backbone.num_features, num_classes, **head_options)
        self.num_classes = num_classes
        self.proj_dim = self.head.proj_dim
        self.embed_dim = self.head.embed_dim

    def forward_features(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> backbone map (B, F, H', W')."""
        return self.backbone(images)

    def forward_head(self, feature_map: Tensor, return_attention: bool = False) -> ModelOutput:
        return self.head(feature_map, return_attention=return_attention)

    def forward(self, images: Tensor, return_attention: bool = False) -> ModelOutput:
        return self.forward_head(self.forward_features(images), return_attention=return_attention)


def create_mlcnc(
    num_classes: int,
    backbone: str = "resnet50",
    pretrained: bool | str = False,
    recipe: str = "paper",
    **options: Any,
) -> MLCNC:
    """Build MLC-NC for ``num_classes`` classes (``mlcnc.create_model("mlcnc", ...)`` builds it,
    or any registered method's model, from a method's options).

    recipe: "paper" or "official" (``mlcnc.recipes``); sets ``classifier_trainable``.
    pretrained: True (ImageNet weights; the paper's setting), False, or a local file.
    options (override the recipe): embed_dim=768, num_heads=8, attn_dropout=0.1,
    proj_dim=20, classifier_trainable, etf_seed=0, alpha_att=1.0.
    """
    head_options = dict(options)
    if head_options.get("classifier_trainable") is None:  # None: the recipe's choice
        head_options["classifier_trainable"] = get_recipe(recipe).classifier_trainable
    return MLCNC(create_backbone(backbone, pretrained), num_classes, **head_options)
