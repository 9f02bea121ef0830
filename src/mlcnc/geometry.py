"""Unit vectors whose gradient stays finite at (near) zero length.

``F.normalize(x, eps=1e-12)`` (what the authors' code uses) divides by max(|x|, 1e-12): at a
zero vector, which a ReLU network does produce (all tokens of an image switched off), the
gradient is g / 1e-12, which overflows float16 and drives every weight to NaN. Here a vector
shorter than ``eps`` is treated as zero: its unit vector and cosines are 0, with zero
gradient. Longer vectors are normalised exactly as by ``F.normalize``.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-6
"""Vectors shorter than this count as zero (far below any trained feature's length)."""


def safe_normalize(x: Tensor, dim: int = -1, eps: float = EPS) -> Tensor:
    """x / |x| along ``dim``; 0 (with zero gradient) where |x| < eps."""
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
    long_enough = norm >= eps
    return torch.where(long_enough, x / torch.where(long_enough, norm, 1.0), 0.0)
