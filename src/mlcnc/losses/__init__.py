"""Losses: MLC-NC's (``criterion``, ``functional``) and one module per baseline loss (a pure
function plus a thin criterion); ``reduction`` holds what they share."""

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
