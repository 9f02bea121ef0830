"""Per-class decision thresholds tuned on the val split (``--thresholds per-class``).

For each class, the threshold on its probability that maximises its F1 on val (among the
val probabilities themselves: predicting the images scored at least that high); a class
without a positive on val keeps the global threshold. They belong to one model (checkpoint
file, variant, epoch) and are stored with the run in ``RUN/thresholds.json``, so
``evaluate`` and ``predict`` tune them once and reuse them. Nothing is tuned on test.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlcnc.engine.checkpoint import checkpoint_run_dir
from mlcnc.io import write_json
from mlcnc.schema import ConfigError

THRESHOLDS_FILE = "thresholds.json"


def tune_per_class(
    probabilities: np.ndarray, targets: np.ndarray, default: float = 0.5
) -> np.ndarray:
    """(C,) thresholds: per class the val probability that, used as ``p >= t``, gives the
    best F1 (the highest such t on a tie); ``default`` for a class without positives."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets) == 1
    thresholds = np.full(probabilities.shape[1], float(default))
    for c in range(probabilities.shape[1]):
        positives = int(targets[:, c].sum())
        if positives == 0:
            continue
        order = np.argsort(-probabilities[:, c], kind="stable")
        scores, hits = probabilities[order, c], targets[order, c]
        true_pos = np.cumsum(hits)
        predicted = np.arange(1, len(scores) + 1)
        f1 = 2 * true_pos / (predicted + positives)
        # Only cut between different scores: p >= scores[k] predicts every tie of it.
        last_of_tie = np.append(scores[1:] != scores[:-1], True)
        f1 = np.where(last_of_tie, f1, -1.0)
        best = int(np.argmax(f1))  # the first maximum: the highest threshold
        thresholds[c] = float(scores[best])
    return thresholds


def _key(checkpoint: Path, variant: str, epoch: int) -> str:
    return f"{checkpoint.name}:{variant}:epoch{epoch}"


def read_stored(checkpoint: Path, variant: str, epoch: int, class_names: Sequence[str]):
    """Thresholds stored for this model in its run folder, or None."""
    run_dir = checkpoint_run_dir(checkpoint)
    if run_dir is None:
        return None
    try:
        stored = json.loads((run_dir / THRESHOLDS_FILE).read_text())
        entry = stored[_key(checkpoint, variant, epoch)]
        return np.array([float(entry["thresholds"][name]) for name in class_names])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(
    checkpoint: Path,
    variant: str,
    epoch: int,
    class_names: Sequence[str],
    thresholds: np.ndarray,
    val_images: int,
) -> Path | None:
    """Record the thresholds of one model in ``RUN/thresholds.json`` (None: no run folder)."""
    run_dir = checkpoint_run_dir(checkpoint)
    if run_dir is None:
        return None
    path = run_dir / THRESHOLDS_FILE
    try:
        stored: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    stored[_key(checkpoint, variant, epoch)] = {
        "tuned_on": f"val ({val_images} images), best F1 per class",
        "thresholds": {name: float(t) for name, t in zip(class_names, thresholds, strict=True)},
    }
    return write_json(path, stored)


def per_class_thresholds(
    choice: Any, cfg: Any, models: dict[str, Any], fabric: Any, batch_size: int | None = None
) -> dict[str, np.ndarray]:
    """Thresholds of each model of ``models`` (variant -> module) of a loaded checkpoint
    (``selection.WeightsChoice``): stored ones, else tuned on the val split and stored."""
    from mlcnc.engine.evaluation import predict_models, split_eval_loader
    from mlcnc.engine.trained import _split_to_evaluate

    state = choice.state
    class_names = list(state["class_names"])
    epoch = int(state.get("epoch") or 0)
    found = {name: read_stored(choice.checkpoint, name, epoch, class_names) for name in models}
    missing = {name: m for name, m in models.items() if found[name] is None}
    if missing:
        try:
            val = _split_to_evaluate(cfg, state, "val")
        except ValueError:
            raise ConfigError(
                f"--thresholds per-class tunes a threshold per class on the val split; the "
                f"dataset of {choice.checkpoint} has none (data.val_csv): use --threshold"
            ) from None
        loader = split_eval_loader(val, cfg, batch_size)
        for name, predictions in predict_models(missing, loader, fabric).items():
            found[name] = tune_per_class(predictions.probabilities, predictions.targets)
            store(choice.checkpoint, name, epoch, class_names, found[name], len(val))
    return found


def thresholds_of(
    path: str | Path,
    checkpoint: str | None = None,
    use_ema: bool | None = None,
    device: str | Any = "cpu",
) -> np.ndarray:
    """The per-class thresholds of the model ``load_trained(path, use_ema, checkpoint=...)``
    loads (stored, else tuned on val and stored)."""
    from lightning.fabric import Fabric

    from mlcnc.config import config_from_dict
    from mlcnc.engine.selection import choose_weights
    from mlcnc.engine.trained import _rebuild, precision_dtype

    choice = choose_weights(path, checkpoint, use_ema)
    cfg = config_from_dict(choice.state["config"])
    accelerator = "cuda" if str(device).startswith("cuda") else "cpu"
    fabric = Fabric(accelerator=accelerator, devices=1, precision="32-true")
    dtype = precision_dtype(choice.state["precision"])
    model = _rebuild(choice, cfg, fabric.device, dtype).model
    return per_class_thresholds(choice, cfg, {choice.variant: model}, fabric)[choice.variant]
