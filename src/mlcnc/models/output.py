"""The typed output every mlcnc model returns, so the engine and losses stay model-agnostic."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class ModelOutput:
    """Shapes use B batch, C classes, E class-feature width, P projection width, N tokens.

    logits:            (B, C) raw scores; sigmoid gives per-class probabilities.
    class_features:    (B, C, E) one feature per class (MLC-NC's f_i^c), else None.
    projections:       (B, C, P) unit-norm per-class projections (MLC-NC's mu_i^c), else None.
    label_embeddings:  (C, E) the fixed ETF label queries the class features align to, else None.
    attention:         (B, C, N) attention of each class query over the N spatial tokens,
                       only when asked for (``return_attention=True``), else None.
    attention_hw:      (H, W) spatial grid of the N tokens, when attention is given.
    """

    logits: Tensor
    class_features: Tensor | None = None
    projections: Tensor | None = None
    label_embeddings: Tensor | None = None
    attention: Tensor | None = None
    attention_hw: tuple[int, int] | None = None
