"""Losses. MLC-NC's are here; the baselines live in ``mlcnc.losses.baselines``."""

from mlcnc.losses.criterion import MLCNCLoss
from mlcnc.losses.functional import (
    collapse_calibration_loss,
    feature_label_alignment_loss,
    two_way_loss,
)

__all__ = [
    "MLCNCLoss",
    "collapse_calibration_loss",
    "feature_label_alignment_loss",
    "two_way_loss",
]
