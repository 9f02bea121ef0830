"""mlcnc: long-tailed multi-label image classification with neural collapse (MLC-NC)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["MLCNC", "__version__", "create_model"]

if TYPE_CHECKING:
    from mlcnc.models import MLCNC, create_model


def __getattr__(name: str) -> Any:
    # Lazy, so that ``import mlcnc`` (and ``mlcnc --help``) does not import torch.
    if name in ("MLCNC", "create_model"):
        from mlcnc import models

        return getattr(models, name)
    raise AttributeError(f"module 'mlcnc' has no attribute {name!r}")
