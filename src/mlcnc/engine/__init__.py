"""The training and evaluation engine (Lightning Fabric loop, EMA, checkpoints, run folder)."""

from __future__ import annotations

from mlcnc.engine.finite import NonFiniteLossError
from mlcnc.engine.loop import train
from mlcnc.engine.records import TrainResult
from mlcnc.engine.setup import make_fabric
from mlcnc.engine.trained import TrainedModel, evaluate_checkpoint, load_trained

__all__ = [
    "NonFiniteLossError",
    "TrainResult",
    "TrainedModel",
    "evaluate_checkpoint",
    "load_trained",
    "make_fabric",
    "train",
]
