"""The simplex equiangular tight frame (ETF): the one constructor used by the label queries
and the classifier of MLC-NC."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def simplex_etf(dim: int, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """A (dim, C) simplex ETF: unit-norm columns with pairwise cosine -1/(C-1).

    V = sqrt(C/(C-1)) U (I_C - J_C/C), with U the Q of a reduced QR factorisation of a
    uniform[0, 1) (dim, C) draw (as the authors' code builds it, spec B1.3). Computed in
    float64 and returned as float32; ``generator`` (a CPU generator) makes it reproducible.
    """
    if num_classes < 2:
        raise ValueError(f"simplex_etf needs num_classes >= 2, got {num_classes}")
    if dim < num_classes:
        raise ValueError(
            f"simplex_etf needs dim >= num_classes for orthonormal columns, got dim={dim} < "
            f"num_classes={num_classes}"
        )
    draw = torch.rand(dim, num_classes, generator=generator, dtype=torch.float64)
    orthonormal, _ = torch.linalg.qr(draw, mode="reduced")
    centering = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    etf = math.sqrt(num_classes / (num_classes - 1)) * orthonormal @ centering
    return etf.float()
