"""MLC-NC's head (spec B1.2-1.8): token embedding, cross-attention with fixed ETF label
queries, per-class projections and the ETF classifier.

Shapes: B batch, F backbone channels, N = H*W tokens, C classes, E embedding width,
P projection width, D = P*C classifier width, h attention heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlcnc.etf import simplex_etf
from mlcnc.geometry import safe_normalize
from mlcnc.models.output import ModelOutput
from mlcnc.schema import Bool, Fraction, Int, PositiveInt, section


class ETFQueryAttention(nn.Module):
    """Multi-head cross-attention of C fixed queries over the N tokens of each image.

    The parameters are those of ``nn.MultiheadAttention`` (same names, same init), but the
    query projection is done once for the (C, E) queries and broadcast over the batch, and
    the attention itself goes through ``scaled_dot_product_attention``.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.mha = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)

    def forward(
        self, queries: Tensor, tokens: Tensor, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """queries (C, E), tokens (B, N, E) -> (B, C, E) and, if asked, the head-averaged
        attention (B, C, N) before dropout (as ``nn.MultiheadAttention`` returns it)."""
        batch, num_tokens, embed_dim = tokens.shape
        num_queries = queries.shape[0]
        heads, head_dim = self.num_heads, embed_dim // self.num_heads
        weight, bias = self.mha.in_proj_weight, self.mha.in_proj_bias
        q = F.linear(queries, weight[:embed_dim], bias[:embed_dim])  # (C, E), once per forward
        key_value = F.linear(tokens, weight[embed_dim:], bias[embed_dim:])  # (B, N, 2E)
        k, v = key_value.view(batch, num_tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
        q = q.view(1, num_queries, heads, head_dim).transpose(1, 2).expand(batch, -1, -1, -1)
        dropout = self.dropout if self.training else 0.0
        if return_attention:
            scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)  # (B, h, C, N)
            probabilities = scores.softmax(dim=-1)
            attention = probabilities.mean(dim=1)
            mixed = F.dropout(probabilities, dropout, self.training) @ v
        else:
            attention = None
            mixed = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        mixed = mixed.transpose(1, 2).reshape(batch, num_queries, embed_dim)
        return self.mha.out_proj(mixed), attention


@section
class MLCNCModelOptions:
    """MLCNCHead's options (spec section 1; defaults of the authors' code, spec 9).

    classifier_trainable: None = the recipe's choice (``mlcnc.recipes``).
    """

    embed_dim: PositiveInt = 768
    num_heads: PositiveInt = 8
    attn_dropout: Fraction = 0.1
    proj_dim: PositiveInt = 20
    alpha_att: float = 1.0
    classifier_trainable: Bool | None = None
    etf_seed: Int = 0


HEAD_DEFAULTS = MLCNCModelOptions()
"""The one place MLCNCHead's defaults are written (``method.model`` of the MLC-NC family)."""


class MLCNCHead(nn.Module):
    """From a backbone map (B, F, H, W) to MLC-NC's ``ModelOutput``.

    Label queries (C, E) and, unless ``classifier_trainable``, the classifier (D, C) are
    buffers drawn from a generator seeded with ``etf_seed``, so a state dict is complete.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        embed_dim: int = HEAD_DEFAULTS.embed_dim,
        num_heads: int = HEAD_DEFAULTS.num_heads,
        attn_dropout: float = HEAD_DEFAULTS.attn_dropout,
        proj_dim: int = HEAD_DEFAULTS.proj_dim,
        alpha_att: float = HEAD_DEFAULTS.alpha_att,
        classifier_trainable: bool = False,
        etf_seed: int = HEAD_DEFAULTS.etf_seed,
    ) -> None:
        super().__init__()
        if embed_dim < num_classes:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be >= num_classes ({num_classes}) for ETF queries"
            )
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.proj_dim = proj_dim
        self.alpha_att = alpha_att
        self.token_embed = nn.Linear(in_features, embed_dim)
        self.token_relu = True  # MLC-NC on CLIP, variant C: identity tokens without the ReLU
        self.attention = ETFQueryAttention(embed_dim, num_heads, attn_dropout)
        generator = torch.Generator().manual_seed(etf_seed)
        self.register_buffer(
            "label_queries", simplex_etf(embed_dim, num_classes, generator).T.contiguous()
        )
        # One (C, E, P) weight for all per-class projections; xavier-normal on the 3-D tensor
        # (fan_in = E*P, fan_out = C*P) as the authors' code initialises it (spec 1.6).
        self.proj_weight = nn.Parameter(torch.empty(num_classes, embed_dim, proj_dim))
        nn.init.xavier_normal_(self.proj_weight)
        self.proj_bias = nn.Parameter(torch.zeros(num_classes, proj_dim))
        classifier = simplex_etf(proj_dim * num_classes, num_classes, generator)  # (D, C)
        if classifier_trainable:
            self.classifier = nn.Parameter(classifier)
        else:
            self.register_buffer("classifier", classifier)
        self.temperature = nn.Parameter(torch.ones(1))

    def forward(self, feature_map: Tensor, return_attention: bool = False) -> ModelOutput:
        batch, _, height, width = feature_map.shape
        tokens = self.token_embed(feature_map.flatten(2).transpose(1, 2))  # (B, N, E)
        if self.token_relu:
            tokens = F.relu(tokens)
        features, attention = self.attention(self.label_queries, tokens, return_attention)
        if self.alpha_att != 1.0:
            features = torch.where(features > 0, self.alpha_att * features, features)
        # All C per-class projections as one batched matmul over classes: (C, B, E) @ (C, E, P).
        projected = torch.baddbmm(
            self.proj_bias.unsqueeze(1), features.transpose(0, 1), self.proj_weight
        ).transpose(0, 1)
        with torch.autocast(device_type=projected.device.type, enabled=False):
            projections = safe_normalize(projected.float())  # (B, C, P)
            logits = self.temperature * (projections.reshape(batch, -1) @ self.classifier.float())
        return ModelOutput(
            logits=logits,
            class_features=features,
            projections=projections,
            label_embeddings=self.label_queries,
            attention=attention,
            attention_hw=(height, width) if return_attention else None,
        )
