"""OLTR's network (Liu et al., CVPR 2019, "Large-Scale Long-Tailed Recognition in an Open
World") for multi-label classification: the dynamic meta-embedding and the modulated
attention, in one model trained in two stages.

Facts from the authors' code (``zhmiao/OpenLongTailRecognition-OLTR``):

- Stage 1 (``config/*/stage_1.py``): the feature model (ResNet, global average pool) and a
  dot-product classifier (``models/DotProductClassifier.py``: one ``nn.Linear``).
- Stage 2 (``config/*/stage_2_meta_embedding.py``): the same backbone with the modulated
  attention on its last map (``layers/ModulatedAttLayer.py``) and ``fc_add``, Linear +
  ReLU after the pool (``use_fc``; ``models/ResNetFeature.py``), then the meta-embedding
  classifier (``models/MetaEmbeddingClassifier.py``) on that direct feature v_direct:
  reachability gamma = 10 / min_c ||v_direct - c_c||; memory feature v_memory =
  softmax(hallucinator(v_direct)) @ centroids (centroids detached: ``.data``); concept
  selector e = tanh(selector(v_direct)); v_meta = gamma (v_direct + e * v_memory); logits
  from the cosine-norm classifier (``models/CosNormClassifier.py``): s * (||x|| / (1 +
  ||x||)) (x / ||x||) . w_c / ||w_c||, s = 16. The hallucinator starts from the stage-1
  classifier's weights (``stage1_weights``), the backbone from stage 1; the modulated
  attention and ``fc_add`` are new.
- Modulated attention: a non-local block (embedded Gaussian: theta, phi, g 1x1 convs to
  F/2 channels, Kaiming-normal with zero bias; softmax over positions of theta^T phi;
  ``conv_mask`` back to F channels, zero-initialised, no bias) times a spatial attention
  softmax(fc_spatial(flattened map)) over the 7 x 7 positions, added to the map:
  f + MA(f) * SA(f).
- Centroids (``run_networks.py``, ``centroids_cal``): before stage 2, the mean stage-2
  feature of each class over the training set; then a parameter of the centroid loss,
  trained with it (``loss/DiscCentroidsLoss.py``, initialised ``randn`` before that).

mlcnc's reading for multi-label (each choice is also in ``docs/baselines_reference.md``):

- One model holds both stages. Until ``start_meta_embedding`` (called by the criterion at
  the first stage-2 epoch, ``mlcnc.losses.oltr``) the forward is stage 1: logits
  ``fc(GAP(f))``; it also returns, without gradient, the stage-2 direct feature
  ReLU(fc_add(GAP(f))), from which the criterion accumulates the class centroids.
  The modulated attention is left out there because it is the identity until stage 2
  trains it (``conv_mask`` is zero and gets no gradient in stage 1), so this is the
  feature the code's ``centroids_cal`` computes with the same weights.
- ``start_meta_embedding(means, valid)`` copies the centroids (classes without a positive
  keep their ``randn`` start), copies the stage-1 classifier into the hallucinator when
  their shapes match (``feature_dim`` = backbone width; otherwise it keeps its own init),
  and sets the buffer ``meta_ready`` (saved in checkpoints: a reloaded model answers with
  the stage it was in).
- Softmax over classes in the hallucinator, as the code: it is the attention over the C
  memory slots (a convex combination of centroids), not a label prediction.
- Reachability: the distance to the nearest centroid, as the code (an image near any of
  its classes is "reachable"), clamped at 1e-12 to stay finite.
- The cosine-norm classifier computes x / (1 + ||x||), which equals the code's
  (||x|| / (1 + ||x||)) (x / ||x||) and is finite at x = 0; scale 16 kept: sigmoid logits
  in [-16, 16].
- Spatial attention on maps other than 7 x 7 (the code's hard-coded size): the map is
  average-pooled to ``attention_size`` x ``attention_size`` for ``fc_spatial`` and the
  softmax is resized back bilinearly (exactly the code's on 7 x 7 maps).
- Open-set recognition (the reachability threshold on softmax scores) is left out: the
  benchmark is closed-set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlcnc.models.backbone import create_backbone
from mlcnc.models.output import ModelOutput


@dataclass
class OLTROutput(ModelOutput):
    """features: (B, D) the direct feature v_direct (stage 2: with gradient; stage 1:
    without, for the centroids). centroids: (C, D) the centroid parameter, stage 2 only."""

    features: Tensor | None = None
    centroids: Tensor | None = None


class ModulatedAttention(nn.Module):
    """OLTR's modulated attention (``layers/ModulatedAttLayer.py``), any map size."""

    def __init__(self, channels: int, attention_size: int = 7, reduction: int = 2) -> None:
        super().__init__()
        inner = max(channels // reduction, 1)
        self.channels, self.inner, self.size = channels, inner, attention_size
        self.g = nn.Conv2d(channels, inner, 1)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.conv_mask = nn.Conv2d(inner, channels, 1, bias=False)
        self.fc_spatial = nn.Linear(attention_size * attention_size * channels, attention_size**2)
        for conv in (self.g, self.theta, self.phi):
            nn.init.kaiming_normal_(conv.weight)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv_mask.weight)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, I)
        phi = self.phi(x).flatten(2)  # (B, I, N)
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, N, I)
        related = torch.softmax(theta @ phi, dim=-1) @ g  # (B, N, I)
        mask = self.conv_mask(related.transpose(1, 2).reshape(b, self.inner, h, w))
        pooled = x if (h, w) == (self.size, self.size) else F.adaptive_avg_pool2d(x, self.size)
        spatial = torch.softmax(self.fc_spatial(pooled.flatten(1)), dim=1)
        spatial = spatial.view(b, 1, self.size, self.size)
        if (h, w) != (self.size, self.size):
            spatial = F.interpolate(spatial, size=(h, w), mode="bilinear", align_corners=False)
        return spatial * mask + x


def cosine_norm_logits(x: Tensor, weight: Tensor, scale: float) -> Tensor:
    """OLTR's ``CosNorm_Classifier``: scale * (x / (1 + ||x||)) . (w_c / ||w_c||), (B, C)."""
    squashed = x / (1.0 + x.norm(dim=1, keepdim=True))
    return scale * squashed @ F.normalize(weight, dim=1).t()


def meta_embedding(
    direct: Tensor,
    centroids: Tensor,
    hallucinator: nn.Linear,
    selector: nn.Linear,
    reachability_scale: float,
) -> Tensor:
    """v_meta = (s / min_c ||v - c_c||) (v + tanh(selector(v)) * softmax(hallucinator(v)) @ C),
    (B, D); ``centroids`` enter as given (the caller detaches them, as the code)."""
    squared = (direct.unsqueeze(1) - centroids.unsqueeze(0)).pow(2).sum(dim=2)  # (B, C)
    nearest = squared.min(dim=1).values.clamp(min=1e-24).sqrt()
    reachability = (reachability_scale / nearest).unsqueeze(1)
    memory = torch.softmax(hallucinator(direct), dim=1) @ centroids
    concept = torch.tanh(selector(direct))
    return reachability * (direct + concept * memory)


class OLTRModel(nn.Module):
    """OLTR for multi-label (module docstring): stage 1 until ``start_meta_embedding``,
    the meta-embedding after it. Returns ``OLTROutput``."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        pretrained: bool | str = True,
        feature_dim: int = 512,
        cosine_scale: float = 16.0,
        reachability_scale: float = 10.0,
        attention_size: int = 7,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.backbone = create_backbone(backbone, pretrained)
        width = self.backbone.num_features
        self.num_features, self.num_classes, self.feature_dim = width, num_classes, feature_dim
        self.cosine_scale, self.reachability_scale = float(cosine_scale), float(reachability_scale)
        self.fc = nn.Linear(width, num_classes)  # stage 1: the dot-product classifier
        self.attention = ModulatedAttention(width, attention_size)
        self.fc_add = nn.Linear(width, feature_dim)
        self.hallucinator = nn.Linear(feature_dim, num_classes)
        self.selector = nn.Linear(feature_dim, feature_dim)
        bound = 1.0 / math.sqrt(feature_dim)
        self.cosine_weight = nn.Parameter(
            torch.empty(num_classes, feature_dim).uniform_(-bound, bound)
        )
        self.centroids = nn.Parameter(torch.randn(num_classes, feature_dim))
        self.register_buffer("meta_ready", torch.zeros((), dtype=torch.bool))

    @property
    def in_stage2(self) -> bool:
        return bool(self.meta_ready)

    @torch.no_grad()
    def start_meta_embedding(self, means: Tensor, valid: Tensor) -> None:
        """Stage 2 from here: centroids from the stage-1 class means (``valid`` classes),
        the hallucinator from the stage-1 classifier where the shapes match."""
        means = means.to(self.centroids)
        valid = valid.to(self.centroids.device)
        self.centroids.copy_(torch.where(valid[:, None], means, self.centroids))
        if self.hallucinator.weight.shape == self.fc.weight.shape:
            self.hallucinator.weight.copy_(self.fc.weight)
            self.hallucinator.bias.copy_(self.fc.bias)
        self.meta_ready.fill_(True)

    def direct_feature(self, pooled: Tensor) -> Tensor:
        """v_direct = ReLU(fc_add(pooled)), (B, D)."""
        return F.relu(self.fc_add(pooled))

    def forward(self, images: Tensor, return_attention: bool = False) -> OLTROutput:
        if return_attention:
            raise ValueError("OLTRModel has no per-class attention maps")
        feature_map = self.backbone(images)
        if not self.in_stage2:
            pooled = feature_map.mean(dim=(2, 3))
            with torch.no_grad():
                features = self.direct_feature(pooled)
            return OLTROutput(logits=self.fc(pooled), features=features)
        direct = self.direct_feature(self.attention(feature_map).mean(dim=(2, 3)))
        meta = meta_embedding(
            direct,
            self.centroids.detach(),
            self.hallucinator,
            self.selector,
            self.reachability_scale,
        )
        logits = cosine_norm_logits(meta, self.cosine_weight, self.cosine_scale)
        return OLTROutput(logits=logits, features=direct, centroids=self.centroids)
