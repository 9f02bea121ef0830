"""Which trained model a run selected, and which weights a command loads.

A run selects one checkpoint and one variant of its weights (``regular`` or ``ema``):

- with a val split: the epoch and variant with the best val score for the metric of
  ``train.select_metric`` -- ``val/<metric>`` (regular) and ``val_ema/<metric>`` (EMA)
  compete; a later epoch must beat the best so far (a tie keeps the earlier one), and within
  an epoch a tie goes to the variant that ``select_metric`` names. Its weights are
  ``best.ckpt``.
- without a val split: the last epoch (``last.ckpt``), with the variant that
  ``select_metric`` names (``val/...``, the default: regular; ``val_ema/...``: EMA). Nothing
  is ever chosen on test.

The selection is a small plain dict (see :func:`on_val`) stored in every checkpoint (key
``selection``: the run's selection when that checkpoint was written) and in
``RUN/selection.json`` (written atomically). ``choose_weights`` turns a run folder or a
checkpoint file plus optional explicit choices into the file and variant to load, and one
line saying so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcnc.engine.checkpoint import BEST, CHECKPOINT_DIR, LAST, load_checkpoint
from mlcnc.io import write_json
from mlcnc.schema import ConfigError

SELECTION_FILE = "selection.json"
VARIANTS = ("regular", "ema")
VAL_PREFIX = {"regular": "val", "ema": "val_ema"}
WEIGHTS = {"regular": "regular weights", "ema": "EMA weights"}


def metric_name(select_metric: str) -> str:
    """``val_ema/map_total`` -> ``map_total``."""
    return select_metric.split("/", 1)[-1]


def preferred_variant(select_metric: str, has_ema: bool) -> str:
    """The variant ``select_metric`` names (regular without an EMA)."""
    return "ema" if has_ema and select_metric.startswith("val_ema/") else "regular"


def _value(record: dict[str, Any], key: str) -> float:
    value = record.get(key)
    return math.nan if value is None else float(value)


def best_variant(
    record: dict[str, Any], select_metric: str, has_ema: bool
) -> tuple[str, str, float] | None:
    """The better variant of one epoch's record on val: (variant, key, value), or None when
    the record holds no val score for the metric (NaN counts as missing)."""
    name = metric_name(select_metric)
    preferred = preferred_variant(select_metric, has_ema)
    order = [preferred, *(v for v in VARIANTS if v != preferred and (v == "regular" or has_ema))]
    best = None
    for variant in order:
        key = f"{VAL_PREFIX[variant]}/{name}"
        value = _value(record, key)
        if not math.isnan(value) and (best is None or value > best[2]):
            best = (variant, key, value)
    return best


def on_val(record: dict[str, Any], select_metric: str, has_ema: bool) -> dict[str, Any] | None:
    """The selection an evaluated epoch's record makes on its own (None without val scores)."""
    best = best_variant(record, select_metric, has_ema)
    if best is None:
        return None
    variant, key, value = best
    return {
        "checkpoint": BEST,
        "variant": variant,
        "epoch": int(record["epoch"]),
        "rule": "val",
        "metric": key,
        "value": value,
        "select_metric": select_metric,
    }


def on_last(
    epoch: int, select_metric: str, has_ema: bool, reason: str | None = None
) -> dict[str, Any]:
    """The selection of a run without a val split (or whose val split never gave
    ``select_metric`` a value: ``reason`` says so): the last epoch, the named variant."""
    selection = {
        "checkpoint": LAST,
        "variant": preferred_variant(select_metric, has_ema),
        "epoch": int(epoch),
        "rule": "last",
        "metric": None,
        "value": None,
        "select_metric": select_metric,
    }
    if reason is not None:
        selection["reason"] = reason
    return selection


def improves(candidate: dict[str, Any] | None, current: dict[str, Any] | None) -> bool:
    """Whether ``candidate`` (from :func:`on_val`) replaces the selection so far (strictly
    better: a later tie keeps the earlier epoch)."""
    if candidate is None:
        return False
    if current is None or current.get("rule") != "val" or current.get("value") is None:
        return True
    return float(candidate["value"]) > float(current["value"])


def describe(selection: dict[str, Any]) -> str:
    """``selected on val_ema/map_total = 41.20 at epoch 3`` or ``the last epoch, 2 (no val
    split)``."""
    if selection.get("rule") == "val":
        value = selection.get("value")
        score = f" = {float(value):.2f}" if value is not None else ""
        return f"selected on {selection['metric']}{score} at epoch {selection['epoch']}"
    return f"the last epoch, {selection['epoch']} ({selection.get('reason') or 'no val split'})"


def write_selection(run_dir: str | Path, selection: dict[str, Any]) -> Path:
    """Write ``RUN/selection.json`` atomically (``mlcnc.io.write_json``)."""
    return write_json(Path(run_dir) / SELECTION_FILE, selection)


def read_selection(run_dir: str | Path) -> dict[str, Any] | None:
    """``RUN/selection.json``, or None when the run has none (older runs) or it is unreadable."""
    path = Path(run_dir) / SELECTION_FILE
    try:
        with open(path) as f:
            selection = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(selection, dict) or selection.get("variant") not in VARIANTS:
        return None
    return selection


def _selected_name(run_dir: Path) -> str:
    """The file name of the checkpoint a run folder selected: selection.json's, else the one
    last.ckpt records (a folder copied without selection.json), else last.ckpt."""
    selection = read_selection(run_dir)
    if selection is None:
        last = run_dir / CHECKPOINT_DIR / LAST
        if last.is_file():
            recorded = load_checkpoint(last)["selection"]
            if isinstance(recorded, dict):
                selection = recorded
    name = selection.get("checkpoint") if selection is not None else LAST
    return name if name in (BEST, LAST) else LAST


@dataclass
class WeightsChoice:
    """What to load: ``checkpoint`` (its ``state`` already read) with the EMA weights or not,
    the run's selection as that checkpoint records it (None for older checkpoints), and
    ``message``, one line saying which weights and why."""

    checkpoint: Path
    state: dict[str, Any]
    use_ema: bool
    selection: dict[str, Any] | None
    message: str

    @property
    def variant(self) -> str:
        return "ema" if self.use_ema else "regular"


def _identity(state_or_config: dict[str, Any], class_names: Any = None) -> tuple:
    """What one run's checkpoints all share: method, backbone and the set of classes."""
    method = state_or_config.get("method") or {}
    names = tuple(sorted(class_names)) if class_names is not None else None
    return method.get("name"), method.get("backbone"), names


def check_belongs_to_run(run_dir: Path, ckpt_path: Path, state: dict[str, Any]) -> None:
    """Refuse a checkpoint of another run copied into ``run_dir``: its method, backbone or
    classes differ from the other checkpoint of the folder (best / last). A run's checkpoints
    always share them (a resume never changes the model or the number of classes)."""
    import torch

    from mlcnc.engine.checkpoint import CheckpointError

    mine = _identity(state["config"], state["class_names"])
    for name in (BEST, LAST):
        sibling = run_dir / CHECKPOINT_DIR / name
        if sibling.resolve() == ckpt_path.resolve() or not sibling.is_file():
            continue
        try:  # memory-mapped: only the small records are read
            other = torch.load(sibling, map_location="cpu", weights_only=True, mmap=True)
            theirs = _identity(other["config"], other["class_names"])
        except Exception:  # an unreadable sibling is reported when it is loaded itself
            continue
        if theirs != mine:
            raise CheckpointError(
                f"{ckpt_path} does not belong to the run in {run_dir}: its method, backbone or "
                f"classes {mine} differ from {sibling.name}'s {theirs} (a checkpoint copied from "
                "another run?); give the checkpoint file itself to use it"
            )


def checkpoint_to_load(path: Path, checkpoint: str | None) -> Path:
    """The checkpoint file ``choose_weights`` loads: ``path`` itself, or from a run folder
    the one ``checkpoint`` names (``best`` / ``last``), else the run's selected one."""
    if path.is_dir():
        folder = path / CHECKPOINT_DIR
        if checkpoint is not None:
            name = {"best": BEST, "last": LAST}.get(checkpoint, checkpoint)
            if name not in (BEST, LAST):
                raise ConfigError(f"bad checkpoint {checkpoint!r}; choose best or last")
            if not (folder / name).is_file():
                hint = (
                    " (the run has no val split, so there is no best epoch); use "
                    "--checkpoint last or leave --checkpoint out"
                    if name == BEST and (folder / LAST).is_file()
                    else ""
                )
                message = f"run folder {path} has no {CHECKPOINT_DIR}/{name}{hint}"
                # Asking for best.ckpt of a run without val is a usage error (exit 2).
                raise ConfigError(message) if hint else FileNotFoundError(message)
            ckpt_path = folder / name
        else:
            ckpt_path = folder / _selected_name(path)
            if not ckpt_path.is_file():
                raise FileNotFoundError(f"run folder {path} has no {ckpt_path.relative_to(path)}")
    elif path.is_file():
        if checkpoint is not None:
            raise ConfigError(
                f"--checkpoint {checkpoint} chooses a checkpoint of a run folder; {path} is a "
                "file (give the run folder, or the file alone)"
            )
        ckpt_path = path
    else:
        raise FileNotFoundError(f"{path} is neither a run folder nor a checkpoint file")
    return ckpt_path


def choose_weights(
    path: str | Path,
    checkpoint: str | None = None,
    use_ema: bool | None = None,
    map_location: Any = "cpu",
) -> WeightsChoice:
    """The checkpoint and variant to load from a run folder or a checkpoint file.

    Run folder: ``checkpoint`` (``best`` / ``last``) picks the file, else the run's selection
    (``selection.json``, else last.ckpt's record, else last.ckpt). A file: itself.
    ``use_ema`` picks the variant, else the selection the loaded checkpoint records; a
    checkpoint without one (an older mlcnc) gives the regular weights. Raises
    FileNotFoundError for a missing file, ConfigError for ``checkpoint`` with a file.
    """
    path = Path(path)
    why: list[str] = []
    ckpt_path = checkpoint_to_load(path, checkpoint)
    state = load_checkpoint(ckpt_path, map_location=map_location)
    if path.is_dir():
        check_belongs_to_run(path, ckpt_path, state)
    recorded = state["selection"]
    recorded = (
        recorded if isinstance(recorded, dict) and recorded.get("variant") in VARIANTS else None
    )
    has_ema = state["ema"] is not None
    if use_ema is None:
        if recorded is None:
            variant = "regular"
            why.append("the checkpoint records no selection (an older mlcnc): regular weights")
        else:
            variant = recorded["variant"]
            if int(state.get("epoch", -1)) == int(recorded["epoch"]):
                why.append(describe(recorded))
            else:
                why.append(
                    f"the variant the run selected: {WEIGHTS[variant]}, {describe(recorded)}, "
                    f"in {recorded['checkpoint']}"
                )
    else:
        variant = "ema" if use_ema else "regular"
        why.append("as asked")
        if recorded is not None:
            why.append(
                f"the run selected {recorded['checkpoint']}, {WEIGHTS[recorded['variant']]}, "
                f"{describe(recorded)}"
            )
    if variant == "ema" and not has_ema:
        variant = "regular"
        why.append("the checkpoint has no EMA weights (train.ema_decay=0)")
    if variant == "ema":
        from mlcnc.engine.traps import ema_note_from_state

        note = ema_note_from_state(state)
        if note is not None:
            why.append(note)
    message = f"loaded {ckpt_path}, {WEIGHTS[variant]} ({'; '.join(why)})"
    return WeightsChoice(ckpt_path, state, variant == "ema", recorded, message)
