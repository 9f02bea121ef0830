"""``mlcnc evaluate --predictions FILE``: per-image scores next to the ground truth.

One CSV row per image of the evaluated split, in the split's order: the image path as the
dataset lists it, the model (``regular`` / ``ema``), the true labels and the labels at the
threshold (class names separated by ``;``, as in the dataset CSVs), then one column
``score:<class>`` per class with the probability (sigmoid of the float32 logit).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlcnc.data.readers import LABEL_SEPARATOR, show_path
from mlcnc.io import write_atomic


def predictions_csv(
    image_paths: Sequence[str | Path],
    class_names: Sequence[str],
    models: dict[str, object],
    thresholds: np.ndarray | float | dict[str, np.ndarray | float],
) -> str:
    """The CSV text for ``models`` (name -> ``Predictions``, ordered by dataset index);
    ``thresholds``: one for all, per class (C,), or per model (name -> either)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "model", "labels", "predicted", *(f"score:{c}" for c in class_names)])
    for name, predictions in models.items():
        given = thresholds[name] if isinstance(thresholds, dict) else thresholds
        limits = np.broadcast_to(np.asarray(given, dtype=np.float64), (len(class_names),))
        probabilities = predictions.probabilities
        for row, index in enumerate(predictions.indices):
            truth = [class_names[c] for c in np.flatnonzero(predictions.targets[row])]
            chosen = [class_names[c] for c in np.flatnonzero(probabilities[row] >= limits)]
            writer.writerow(
                [
                    show_path(image_paths[int(index)]),
                    name,
                    LABEL_SEPARATOR.join(truth),
                    LABEL_SEPARATOR.join(chosen),
                    *(f"{p:.6g}" for p in probabilities[row]),
                ]
            )
    return buffer.getvalue()


def write_predictions(path: str | Path, *args, **kwargs) -> Path:
    """``predictions_csv`` written atomically to ``path``."""
    return write_atomic(Path(path), predictions_csv(*args, **kwargs))
