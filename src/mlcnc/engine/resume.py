"""Continuing a run: what ``--resume`` names, the checks before it continues, and the state
and run folder restored from its checkpoint.

``read_saved_run`` finds the checkpoint (or, for a run folder stopped before its first
checkpoint, the config.yaml) that ``--resume`` names; the CLI reads the config from it and
``plan_resume`` decides where the run continues. Each process then checks the data against
the checkpoint's (``check_resume_data``) and restores the model, optimiser, schedule, EMA,
selection and history (``restore_run``); rank 0 makes the run folder's records and best.ckpt
agree with the checkpoint (``open_folder``).

Checkpoints of an older mlcnc reach this module upgraded (``checkpoint.upgrade_checkpoint``):
a key the file lacked is marked as filled (``filled_by_upgrade``), which is what the notes
about older checkpoints read.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcnc.config import (
    RUNTIME_ONLY_KEYS,
    Config,
    ConfigError,
    OptimConfig,
    config_diff,
    config_from_dict,
    config_to_dict,
    dump_config,
)
from mlcnc.data import DataError
from mlcnc.engine import selection as sel
from mlcnc.engine.checkpoint import (
    BEST,
    CHECKPOINT_DIR,
    LAST,
    MissingCheckpointError,
    checkpoint_run_dir,
    compare_data,
    compare_eval_data,
    filled_by_upgrade,
    load_checkpoint,
)
from mlcnc.engine.optim import build_scheduler_at
from mlcnc.engine.run_folder import RunFolderError
from mlcnc.io import write_atomic

if TYPE_CHECKING:
    from mlcnc.engine.setup import Run


@dataclass
class SavedRun:
    """What ``--resume`` names: the checkpoint (None for a run folder stopped before its first
    checkpoint, which starts over from its config.yaml) and the run's config."""

    config: dict[str, Any]  # the config as saved (a plain dict)
    state: dict[str, Any] | None = None  # the checkpoint
    path: Path | None = None  # the checkpoint file
    run_dir: Path | None = None  # the run folder it belongs to (None: a loose file)
    stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the checkpoint when read


def read_saved_run(resume: str | Path) -> SavedRun:
    """The checkpoint (or config.yaml) of a run folder or checkpoint file given to --resume."""
    resume = Path(resume)
    if resume.is_dir():
        ckpt = resume / CHECKPOINT_DIR / LAST
        if not ckpt.is_file():
            best = resume / CHECKPOINT_DIR / BEST
            if best.is_file():  # never deleted here: the user says what to do with it
                raise MissingCheckpointError(
                    f"run folder {resume} has no {CHECKPOINT_DIR}/{LAST} but has {best}; "
                    f"continue from it with --resume {best}, or start over with --overwrite"
                )
            if not (resume / "config.yaml").is_file():
                raise MissingCheckpointError(
                    f"run folder {resume} has no {CHECKPOINT_DIR}/{LAST} and no config.yaml: "
                    "there is no run to resume there"
                )
            return SavedRun(read_run_config(resume / "config.yaml"), run_dir=resume)
        run_dir = resume
    elif resume.is_file():
        ckpt, run_dir = resume, checkpoint_run_dir(resume)
    else:
        raise MissingCheckpointError(f"{resume} is neither a run folder nor a checkpoint file")
    state = load_checkpoint(ckpt)
    stat = ckpt.stat()
    return SavedRun(state["config"], state, ckpt, run_dir, (stat.st_mtime_ns, stat.st_size))


def read_run_config(path: Path) -> dict[str, Any]:
    """A run folder's config.yaml as a dict; a ``ConfigError`` naming it if it is not a
    YAML mapping (or holds a duplicate key or an alias)."""
    import yaml

    from mlcnc.yaml_file import YAMLRefused, load_yaml

    try:
        data = load_yaml(path.read_text(encoding="utf-8-sig"))
    except (yaml.YAMLError, YAMLRefused, UnicodeDecodeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ConfigError(f"{path}: not a readable config ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a config (expected a mapping of keys)")
    return data


RESUME_EXACT_KEYS: tuple[str, ...] = ("data.num_workers",)
"""Runtime keys (``RUNTIME_ONLY_KEYS``: a finished benchmark run is read back whatever they
are) that still change what the remaining epochs of a resumed run compute: the random
augmentations come from the loader's worker processes, seeded per worker. A change is
refused on resume unless ``--force``."""


@dataclass
class Resume:
    """Where and from what a run continues (built by ``train`` in the launching process)."""

    mode: str  # "new", "overwrite" or "resume"
    state: dict[str, Any] | None = None  # the checkpoint (None: a new run, or a restart)
    path: Path | None = None  # the checkpoint file
    source_dir: Path | None = None  # the run folder the checkpoint belongs to
    run_dir: Path | None = None  # where the run continues (None: cfg.train.output)
    force: bool = False
    stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the checkpoint when read


def plan_resume(cfg: Config | None, resume: Path, force: bool) -> tuple[Config, Resume]:
    """The config and the folder a resumed run continues with, and its checkpoint."""
    saved_run = read_saved_run(resume)
    ckpt, run_dir = saved_run.path, saved_run.run_dir
    saved = config_from_dict(saved_run.config)
    if cfg is None:
        cfg = saved
    else:
        differing = [
            k
            for k in config_diff(config_to_dict(saved), config_to_dict(cfg))
            if k not in RUNTIME_ONLY_KEYS or k in RESUME_EXACT_KEYS
        ]
        why = (
            "; the loader processes draw the augmentations, so the remaining epochs would "
            "differ from an uninterrupted run's"
            if set(differing) & set(RESUME_EXACT_KEYS)
            else ""
        )
        if differing and not force:
            raise ConfigError(
                f"refusing to resume {ckpt or run_dir} with a different config "
                f"(differs in: {', '.join(differing)}){why}; pass --force to resume anyway"
            )
    own = {same_path(p) for p in (run_dir, saved.train.output) if p is not None}
    if cfg.train.output is not None and same_path(cfg.train.output) not in own:
        mode = "new"  # continue the checkpoint in another, new run folder
        if ckpt is None:
            raise RunFolderError(
                f"run folder {run_dir} has no checkpoint yet: nothing to continue in "
                f"{cfg.train.output}; start a new run there instead"
            )
        target = Path(cfg.train.output)
    elif run_dir is None:
        raise RunFolderError(
            f"{resume} is a checkpoint outside a run folder (not in RUN/{CHECKPOINT_DIR}/), "
            "so there is no run to continue; pass --output DIR to continue it in a new run "
            "folder"
        )
    else:
        # The config keeps its train.output (the records stay those of the run as it was
        # started); the folder it continues in is the checkpoint's own.
        mode, target = "resume", run_dir
    trained = int(saved_run.state["epoch"]) if saved_run.state is not None else 0
    if cfg.optim.epochs < trained:
        raise ConfigError(
            f"optim.epochs={cfg.optim.epochs}: {resume} has already trained {trained} epochs; "
            f"a resumed run can only be extended (optim.epochs >= {trained}); train a new run "
            "for a shorter schedule"
        )
    source = run_dir if ckpt is not None else None
    plan = Resume(mode, saved_run.state, ckpt, source, target, force, saved_run.stamp)
    return cfg, plan


def load_saved(plan: Resume, part: str, load: Any, saved: Any) -> None:
    """``load(saved)`` for one part of a resumed checkpoint; a config that no longer fits it
    (another backbone, optimizer or method under ``--force``) is one line, not a traceback."""
    try:
        load(saved)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"cannot resume {plan.path}: its saved {part} does not fit the config ({first[:200]}); "
            "--force accepts changed data and schedule keys, not another model, optimizer or "
            "method: start a new run (without --resume)"
        ) from None


def same_path(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


# --------------------------------------------------------------------------------------
# every process: checks and state


def check_resume_data(
    plan: Resume, split: Any, eval_splits: dict[str, Any] | None = None
) -> list[str]:
    """Refuse to resume on training data other than the checkpoint's: the class names, their
    order, their number, and the fingerprint of the images and labels (SHA-256 over the
    sorted paths and label names). ``--force`` accepts all but a different number of classes
    (the weights have one column per class), and says what it accepted. Returns notes."""
    assert plan.state is not None
    problems, note = compare_data(plan.state, split, plan.path)
    problems += compare_eval_data(plan.state, eval_splits or {})
    notes = [note] if note else []
    if not problems:
        return notes
    counts_differ = len(plan.state["class_names"]) != len(split.class_names)
    differs = "; ".join(problems)
    if counts_differ:
        raise DataError(
            f"refusing to resume {plan.path}: its training data differ in {differs}; a model "
            "for another number of classes cannot continue, even with --force: start a new run"
        )
    if not plan.force:
        raise DataError(
            f"refusing to resume {plan.path}: the data differ from the checkpoint's "
            f"in {differs}; restore the data, or pass --force to resume on the new data"
        )
    return [*notes, f"--force: resuming {plan.path} although the data differ in {differs}"]


def schedule_changed(state: dict[str, Any], cfg: Config, steps_per_epoch: int) -> bool:
    """Whether the saved schedule no longer fits the run: ``optim:`` differs from the saved
    config's, or the saved OneCycle's length differs from epochs x steps per epoch."""
    saved = config_from_dict(state["config"].get("optim", {}), OptimConfig, "optim")
    if config_to_dict(saved) != config_to_dict(cfg.optim):  # both with today's defaults
        return True
    total = state["scheduler"].get("total_steps")
    return total is not None and int(total) != cfg.optim.planned_epochs * steps_per_epoch


def restore_run(run: Run, state: dict[str, Any], optimizer: Any) -> None:
    """Optimiser (``optimizer``: the one Fabric wraps), schedule (re-planned when it changed),
    EMA, step, epoch, selection, test AP and history of ``run`` from a checkpoint (the model
    and criterion are loaded when the method is built)."""
    o, t = run.cfg.optim, run.cfg.train
    plan = Resume("resume", state, run.folder.path)
    load_saved(plan, "optimizer", optimizer.load_state_dict, state["optimizer"])
    run.start_epoch, run.step = int(state["epoch"]), int(state["step"])
    run.folder.resume_step = run.step  # TensorBoard hides what the resumed run replays
    if schedule_changed(state, run.cfg, run.steps_per_epoch) and run.start_epoch < o.epochs:
        # Extending (or re-planning) a run: the new plan, positioned at the saved step.
        run.scheduler = build_scheduler_at(optimizer, o, run.steps_per_epoch, run.step)
    else:
        load_saved(plan, "scheduler", run.scheduler.load_state_dict, state["scheduler"])
    if run.ema is not None and state["ema"] is not None:
        load_saved(plan, "EMA model", run.ema.module.load_state_dict, state["ema"])
    run.best, run.selection = state["best"], state["selection"]
    if filled_by_upgrade(state, "selection") and run.best is not None:
        # An older mlcnc's checkpoint recorded the best epoch but no selection: select it.
        run.selection = sel.on_val(run.best, t.select_metric, run.ema is not None)
    if state["test_ap"] is not None:
        run.last_ap = np.asarray(state["test_ap"], dtype=np.float64)
    if state["history"] is not None:  # else rank 0 reads metrics.jsonl (open_folder)
        run.history = [r for r in state["history"] if r["epoch"] <= run.start_epoch]


# --------------------------------------------------------------------------------------
# rank 0: the run folder


def open_folder(run: Run, plan: Resume) -> list[str]:
    """Rank 0: lock and prepare the run folder, write the config, make the records and
    best.ckpt agree with the checkpoint resumed from. Returns notes for the user."""
    folder = run.folder
    notes = folder.prepare(plan.mode)
    try:
        if plan.path is not None and plan.stamp is not None:
            stat = plan.path.stat()
            if (stat.st_mtime_ns, stat.st_size) != plan.stamp:
                raise RunFolderError(
                    f"{plan.path} changed while this run was starting (another process wrote "
                    "it); run the command again"
                )
        if plan.mode == "resume" and plan.state is not None:
            notes += _keep_edited_config(folder.path / "config.yaml", plan.state["config"])
        folder.write_config(dump_config(run.cfg))
        if plan.state is not None:
            if filled_by_upgrade(plan.state, "history"):
                notes.append(_history_from_folder(run, plan))
            notes += restore_best(run, plan)
        elif plan.mode == "resume":
            notes += _start_over(run)
        if plan.mode == "resume" or plan.state is not None:
            folder.write_records(run.history)
    except BaseException:
        folder.close("failed")
        raise
    return notes


def _keep_edited_config(path: Path, saved: dict[str, Any]) -> list[str]:
    """A config.yaml edited by hand since the checkpoint is not rewritten silently: it is
    kept as config.yaml.edited and the note says which keys differ."""
    if not path.is_file():
        return []
    try:
        on_disk = config_to_dict(config_from_dict(read_run_config(path)))
        differing = config_diff(config_to_dict(config_from_dict(saved)), on_disk)
    except ConfigError as error:
        differing = [str(error)]
    if not differing:
        return []
    kept = path.with_name(path.name + ".edited")
    write_atomic(kept, path.read_bytes())
    return [
        f"{path} was edited since the checkpoint (differs in: {', '.join(differing)[:300]}); "
        f"kept as {kept} and rewritten from the checkpoint's config: a resumed run takes its "
        "config from the checkpoint (change keys with key=value and --force)"
    ]


def _history_from_folder(run: Run, plan: Resume) -> str:
    """The records of a checkpoint without an epoch history: the folder's metrics.jsonl."""
    on_disk = [r for r in run.folder.read_records() if r.get("epoch", 0) <= run.start_epoch]
    run.history = on_disk
    missing = sorted(set(range(1, run.start_epoch + 1)) - {r.get("epoch") for r in on_disk})
    return (
        f"{plan.path} was written by an older mlcnc without an epoch history: the "
        "records before it come from metrics.jsonl"
        + (f", which lacks epoch(s) {missing}" if missing else "")
    )


def _start_over(run: Run) -> list[str]:
    """A run folder stopped before its first checkpoint starts over from its config.yaml."""
    folder = run.folder
    notes = [
        f"{folder.path} has no checkpoint yet (stopped during its first epochs): "
        "starting it over from its config.yaml"
    ]
    folder.resume_step = 0  # TensorBoard hides the stopped attempt's events
    best = folder.checkpoints / BEST
    if best.is_file():
        best.unlink()
        notes.append(f"removed {best}, which no checkpoint of the run vouches for")
    return notes


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch stored in a checkpoint file, or None if it cannot be read."""
    try:
        return int(load_checkpoint(path)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None


def restore_best(run: Run, plan: Resume) -> list[str]:
    """Make best.ckpt hold the epoch the resumed checkpoint records as best.

    The loop writes last.ckpt (the commit point) and then, at an improving epoch, the same
    state to best.ckpt; an improving epoch always writes last.ckpt. A kill between the two
    leaves best.ckpt one improvement behind while last.ckpt, which names its own epoch as
    the best, holds exactly what best.ckpt should: it is copied. Continuing from another
    folder's checkpoint, that folder's best.ckpt is used when it holds the recorded epoch.
    """
    assert plan.state is not None and plan.path is not None
    recorded = (plan.state["best"] or {}).get("epoch")
    target = run.folder.checkpoints / BEST
    if recorded is None:
        return []
    if target.is_file() and checkpoint_epoch(target) == recorded:
        return []
    candidates = []
    if plan.source_dir is not None:
        candidates.append(plan.source_dir / CHECKPOINT_DIR / BEST)
    if int(plan.state["epoch"]) == recorded:
        candidates.append(plan.path)
    for candidate in candidates:
        if candidate.is_file() and checkpoint_epoch(candidate) == recorded:
            if same_path(candidate) != same_path(target):
                _copy_atomic(candidate, target)
            return [f"restored {target} (epoch {recorded}) from {candidate}"]
    have = checkpoint_epoch(target) if target.is_file() else None
    return [
        f"{target} holds epoch {have}, but {plan.path} records epoch {recorded} as the best on "
        "val, and no checkpoint of that epoch is left to restore it from; it is rewritten at "
        "the next improvement"
    ]


def _copy_atomic(source: Path, target: Path) -> None:
    """Copy ``source`` over ``target`` through a unique temporary name and a rename."""
    write_atomic(target, writer=lambda f: _copy_into(source, f))


def _copy_into(source: Path, out: Any) -> None:
    with open(source, "rb") as f:
        shutil.copyfileobj(f, out)
