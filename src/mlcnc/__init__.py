"""mlcnc: long-tailed multi-label image classification with neural collapse (MLC-NC).

The Python API (imported lazily, so ``import mlcnc`` stays light)::

    import mlcnc
    cfg = mlcnc.load_config("synthetic", ["optim.epochs=2"])   # checked on load
    result = mlcnc.train(cfg)                                   # -> TrainResult
    trained = mlcnc.load_trained(result.run_dir)                # model + eval transform
    model = mlcnc.create_model("erm", num_classes=20, backbone="resnet50")  # any method
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "MLCNC",
    "__version__",
    "create_mlcnc",
    "create_model",
    "evaluate_checkpoint",
    "load_config",
    "load_trained",
    "train",
]

if TYPE_CHECKING:
    from mlcnc.config import load_config
    from mlcnc.engine import evaluate_checkpoint, load_trained, train
    from mlcnc.methods import create_model
    from mlcnc.models import MLCNC, create_mlcnc

_LAZY = {
    "MLCNC": "mlcnc.models",
    "create_mlcnc": "mlcnc.models",
    "create_model": "mlcnc.methods",
    "load_config": "mlcnc.config",
    "train": "mlcnc.engine",
    "load_trained": "mlcnc.engine",
    "evaluate_checkpoint": "mlcnc.engine",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that ``import mlcnc`` (and ``mlcnc --help``) does not import torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mlcnc' has no attribute {name!r}")
