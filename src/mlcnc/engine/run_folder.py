"""The run folder: resolved config, per-epoch metrics (JSON lines + CSV), TensorBoard, plots.

Layout::

    RUN/config.yaml            the resolved config (every key)
    RUN/metrics.jsonl          one JSON object per epoch
    RUN/metrics.csv            the same, one row per epoch (columns = union of keys)
    RUN/per_class.csv          per-class AP / training frequency / group at the last epoch
    RUN/tensorboard/           TensorBoard event files
    RUN/checkpoints/           last.ckpt, best.ckpt (best on val, when there is a val split)
    RUN/plots/                 loss terms, mAP by group, AP vs frequency, NC diagnostics
    RUN/.lock                  while a process trains in RUN: its pid and host

Only rank 0 writes. Every file is written whole to a temporary name unique to the process
and renamed over the old one, so a reader (or a kill) never sees half a file. The metrics
files are rebuilt from the epoch history the loop keeps (and stores in every checkpoint),
never appended to, so they always hold exactly the epochs of that history.

A folder that holds a run is never reused silently: ``prepare`` refuses it for a new run
(pointing at ``--resume`` / ``--overwrite``), clears the old run's files with
``overwrite``, and takes ``RUN/.lock`` (an ``flock``: the kernel frees it when its process
dies, so a lock left by a killed run is stale by construction) so that a second process
cannot train in a folder that is in use.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import socket
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlcnc.engine.checkpoint import BEST, CHECKPOINT_DIR, LAST, is_run_checkpoint_name
from mlcnc.groups import MAP_GROUPS as GROUPS
from mlcnc.io import jsonable, open_atomic, write_atomic
from mlcnc.schema import ConfigError

NC_KEYS = ("nc1", "nc2_equinorm", "nc2_cos_mean_dev", "nc3")
LOCK_FILE = ".lock"
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "metrics.csv")
"""Files that show a folder holds a run (besides checkpoints/*.ckpt)."""
RUN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "metrics.csv",
    "per_class.csv",
    "result.json",
    "thresholds.json",  # per-class thresholds of the run's checkpoints (engine.thresholds)
    "selection.json",  # the checkpoint the run selected (engine.selection)
)
RUN_FOLDERS = {
    CHECKPOINT_DIR: (BEST, LAST, "epoch-*.ckpt"),  # only is_run_checkpoint_name's names
    "tensorboard": ("**/events.out.tfevents.*", "**/hparams.yaml"),
    "plots": ("*.png", "*.pdf"),
}
"""What ``--overwrite`` removes: the files a run (and a benchmark) writes, by folder and
pattern; anything else in those folders is the user's and stays (so does the folder), also
the exports ``mlcnc export`` wrote beside the checkpoints (``*.onnx``, ``*.pt``): the notice
names them, as files of the old run."""
KEPT_EXPORTS = ("*.onnx", "*.pt")
TIMING_KEYS = ("img_per_s", "epoch_seconds", "eval_seconds")
"""Record keys that measure time: they differ between two otherwise identical runs."""


class RunFolderError(ConfigError):
    """A run folder cannot be used as asked (it holds a run, is in use, or holds none)."""


class RunInUseError(RunFolderError):
    """Another live process holds the run folder's lock."""


def default_run_dir(config_name: str, root: str | Path = "runs") -> Path:
    """runs/<config name>-<UTC timestamp>."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{Path(config_name).stem}-{stamp}"


def holds_mlcnc_run(path: str | Path) -> bool:
    """Whether ``path`` holds an mlcnc run: a checkpoint, or a config.yaml with the sections
    of an mlcnc config (not merely files with a run's names)."""
    import yaml

    path = Path(path)
    if any((path / CHECKPOINT_DIR).glob("*.ckpt")):
        return True
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and {"data", "method", "optim", "train"} <= set(config)


def run_contents(path: str | Path) -> list[str]:
    """The run files in ``path`` (config, metrics, checkpoints); empty if it holds no run."""
    path = Path(path)
    found = [name for name in RUN_MARKERS if (path / name).is_file()]
    checkpoints = path / CHECKPOINT_DIR
    if checkpoints.is_dir():
        found += [f"{CHECKPOINT_DIR}/{p.name}" for p in sorted(checkpoints.glob("*.ckpt"))]
    return found


def check_run_folder(path: str | Path, mode: str) -> list[str]:
    """Refuse ``path`` as the folder of a ``new`` run when it holds a run, and as one to
    ``overwrite`` when it holds run files but no mlcnc run; returns ``run_contents``. The
    check ``RunFolder.prepare`` makes, and ``train --dry-run`` (which writes nothing)."""
    path = Path(path)
    found = run_contents(path)
    if mode == "new" and found:
        raise RunFolderError(refuse_message(path, found))
    # Only a folder that holds an mlcnc run is cleared: a config.yaml or metrics.csv of the
    # user's own is not a run, and nothing of theirs is removed.
    if mode == "overwrite" and found and not holds_mlcnc_run(path):
        raise RunFolderError(
            f"--overwrite: {path} holds {', '.join(found)} but no mlcnc run (no checkpoint, "
            "no mlcnc config.yaml); nothing was removed: choose another --output"
        )
    return found


# --------------------------------------------------------------------------------------
# the lock


class RunLock:
    """``RUN/.lock``: an exclusive ``flock`` on a file holding the owner's pid and host.

    The kernel drops an ``flock`` when its process ends, however it ends, so a lock file
    left by a killed run does not block anyone; the file is removed on release. Where
    ``fcntl`` is missing (Windows) or the file system has no ``flock``, the file is created
    exclusively and one whose pid is not running on this host is taken over as stale.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self.stale: dict[str, Any] | None = None  # the dead owner whose lock was taken over

    def acquire(self) -> None:
        """Take the lock or raise ``RunFolderError`` naming the process that holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            self._acquire_exclusive()
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise RunInUseError(self._in_use(owner)) from None
            except OSError:  # a file system without flock (some network mounts)
                empty = os.fstat(fd).st_size == 0
                os.close(fd)
                if empty:
                    self.path.unlink(missing_ok=True)
                self._acquire_exclusive()
                return
            # The previous owner may have removed the file between our open and our lock.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        owner = _read_owner(fd)
        self.stale = owner or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me()).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _acquire_exclusive(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    owner = {}
                if owner.get("host") == socket.gethostname() and not _alive(owner.get("pid")):
                    self.stale = owner
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunInUseError(
                    self._in_use(owner) + f"; if that process is gone, delete {self.path}"
                ) from None
            os.write(fd, json.dumps(_me()).encode())
            self._fd = fd
            return
        raise RunInUseError(self._in_use({}))

    def _in_use(self, owner: dict[str, Any]) -> str:
        who = (
            f"pid {owner.get('pid')} on host {owner.get('host')}, since {owner.get('started')}"
            if owner
            else "another process"
        )
        return (
            f"run folder {self.path.parent} is in use by another mlcnc process ({who}); "
            "wait for it to finish or stop it, or use another --output"
        )

    def release(self) -> None:
        """Remove the lock file and drop the lock (in that order: see ``acquire``)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _me() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        owner = json.loads(data.decode() or "{}")
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------------------
# the folder


class RunFolder:
    """Writes a run's files; every method is a no-op unless ``enabled`` (rank 0).

    Nothing is created until ``prepare``, which takes the lock and checks the folder.
    """

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.checkpoints = self.path / CHECKPOINT_DIR
        self.records: list[dict[str, Any]] = []
        self.lock = RunLock(self.path / LOCK_FILE)
        self.use_tensorboard = True  # train.loggers lists tensorboard
        self.trackers: list[Any] = []  # the other loggers of train.loggers (engine.loggers)
        self._tensorboard = None
        self.resume_step: int | None = None
        """The step a resumed run continues after: TensorBoard purges the events logged
        after it by the interrupted run, which the resumed run logs again."""

    def prepare(self, mode: Literal["new", "overwrite", "resume"]) -> list[str]:
        """Lock the folder and make it ready; returns notes for the user.

        new:       refuse a folder that holds a run (pointing at --resume / --overwrite);
        overwrite: remove the old run's files (``RUN_FILES`` and ``RUN_FOLDERS``);
        resume:    continue the run: remove temporary files that killed processes left.
        """
        if not self.enabled:
            return []
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            notes = self._prepare(mode)
        except BaseException:
            self.lock.release()
            raise
        if self.lock.stale:
            owner = self.lock.stale
            notes.append(
                f"took over the lock left by pid {owner.get('pid')} on {owner.get('host')} "
                "(no process holds it any more: that run was stopped)"
            )
        return notes

    def _prepare(self, mode: str) -> list[str]:
        notes = []
        found = check_run_folder(self.path, mode)
        if mode == "overwrite":
            removed = self.clear() if found else []
            if removed:
                notes.append(
                    f"--overwrite: removed the previous run in {self.path} ({', '.join(removed)})"
                )
            exports = sorted({f.name for p in KEPT_EXPORTS for f in self.checkpoints.glob(p)})
            if removed and exports:
                notes.append(
                    f"--overwrite: kept {CHECKPOINT_DIR}/{', '.join(exports)}: exports of the "
                    "previous run's model (mlcnc export wrote them, not the run); delete them "
                    "or export again with --overwrite"
                )
            others = sorted(
                f.name
                for f in (self.checkpoints.iterdir() if self.checkpoints.is_dir() else ())
                if f.name not in exports and not f.name.startswith(".")
            )
            if removed and others:
                notes.append(
                    f"--overwrite: kept {CHECKPOINT_DIR}/{', '.join(others)}: not files the run "
                    "writes (only best.ckpt, last.ckpt and epoch-NNNN.ckpt are replaced)"
                )
        if mode == "resume":
            self.remove_temporary_files()
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        return notes

    def clear(self) -> list[str]:
        """Remove the run's own files and folders (others are kept); returns their names."""
        removed = []
        for name in RUN_FILES:
            if (self.path / name).is_file():
                (self.path / name).unlink()
                removed.append(name)
        for name, patterns in RUN_FOLDERS.items():
            folder = self.path / name
            files = sorted({f for pattern in patterns for f in folder.glob(pattern) if f.is_file()})
            if name == CHECKPOINT_DIR:  # a copy the user made there (keep-epoch1.ckpt) stays
                files = [f for f in files if is_run_checkpoint_name(f.name)]
            for file in files:
                file.unlink()
            if name == CHECKPOINT_DIR and files:
                names = [f.name for f in files]
                more = f" and {len(names) - 3} more" if len(names) > 4 else ""
                removed.append(f"{name}/ ({', '.join(names[:3] if more else names)}{more})")
            elif files:
                removed.append(f"{name}/ ({len(files)} file(s))")
            for sub in sorted((d for d in folder.rglob("*") if d.is_dir()), reverse=True):
                if not any(sub.iterdir()):
                    sub.rmdir()
        for folder in sorted(self.path.glob("inspect-*")):  # written whole by mlcnc inspect
            if folder.is_dir():
                shutil.rmtree(folder)
                removed.append(f"{folder.name}/")
        self.remove_temporary_files()
        return removed

    def remove_temporary_files(self) -> None:
        """Temporary files of interrupted writes (only this folder's owner writes here)."""
        for folder in (self.path, self.checkpoints):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)

    def write_config(self, text: str) -> None:
        """config.yaml (the resolved config), atomically."""
        if self.enabled:
            write_atomic(self.path / "config.yaml", text)

    # -- metrics -------------------------------------------------------------------------

    def write_records(self, records: Sequence[Mapping[str, Any]]) -> None:
        """metrics.jsonl and metrics.csv from ``records`` (the whole history), each written
        whole and renamed into place."""
        if not self.enabled:
            return
        self.records = [jsonable(dict(r)) for r in records]
        lines = "".join(json.dumps(record, allow_nan=False) + "\n" for record in self.records)
        write_atomic(self.path / "metrics.jsonl", lines)
        write_atomic(self.path / "metrics.csv", _csv_text(self.records))

    def read_records(self) -> list[dict[str, Any]]:
        """metrics.jsonl as it is on disk (for checkpoints without a history)."""
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        """TensorBoard scalars (numbers only)."""
        if not self.enabled:
            return
        numbers = {
            k: float(v)
            for k, v in scalars.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        }
        if numbers:
            if self.use_tensorboard:
                self.tensorboard.log_metrics(numbers, step=step)
            for tracker in self.trackers:
                tracker.log_metrics(numbers, step=step)

    @property
    def tensorboard(self) -> Any:
        if self._tensorboard is None:
            from lightning.fabric.loggers import TensorBoardLogger

            purge = {} if self.resume_step is None else {"purge_step": self.resume_step + 1}
            self._tensorboard = TensorBoardLogger(
                root_dir=self.path, name="tensorboard", version="", **purge
            )
        return self._tensorboard

    def flush_tensorboard(self) -> None:
        """Write the TensorBoard events logged so far to disk (before a checkpoint)."""
        if self._tensorboard is not None:
            self._tensorboard.experiment.flush()

    def close(self, status: str = "success") -> None:
        """Flush TensorBoard and release the lock."""
        try:
            if self._tensorboard is not None:
                self._tensorboard.finalize(status)
                self._tensorboard = None
            for tracker in self.trackers:
                tracker.finalize(status)
            self.trackers = []
        finally:
            self.lock.release()

    def write_per_class(
        self,
        class_names: Sequence[str],
        class_freq: Sequence[int],
        groups: Mapping[str, np.ndarray],
        columns: Mapping[str, np.ndarray],
    ) -> None:
        """per_class.csv: class, training positives, group, then one column per AP series (%)."""
        if not self.enabled:
            return
        group_of = {int(c): name for name, indices in groups.items() for c in indices}
        with open_atomic(self.path / "per_class.csv", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class", "train_positives", "group", *columns])
            for c, name in enumerate(class_names):
                values = [f"{100 * float(v[c]):.4f}" for v in columns.values()]
                writer.writerow([name, int(class_freq[c]), group_of.get(c, ""), *values])

    # -- plots ---------------------------------------------------------------------------

    def write_plots(
        self,
        class_names: Sequence[str],
        class_freq: Sequence[int],
        groups: Mapping[str, np.ndarray],
        last_ap: np.ndarray | None,
        split: str = "test",
        warmup_epochs: int | None = None,
        select_metric: str | None = None,
    ) -> list[Path]:
        """The four figures from the records; a figure that cannot be drawn is skipped with
        a warning (a plot must never fail a finished run)."""
        if not self.enabled or not self.records:
            return []
        from mlcnc import plots

        folder = self.path / "plots"
        folder.mkdir(exist_ok=True)
        written: list[Path] = []

        def attempt(name: str, draw: Any) -> None:
            try:
                written.append(draw())
            except Exception as error:  # a figure is a convenience: warn, never fail the run
                warnings.warn(f"plot {name} skipped: {error}", RuntimeWarning, stacklevel=2)

        self._plot_records(folder, split, attempt, warmup_epochs, select_metric)
        if last_ap is not None:
            attempt(
                "AP vs frequency",
                lambda: plots.plot_ap_vs_frequency(
                    last_ap,
                    np.maximum(np.asarray(class_freq), 1),
                    folder / "ap_vs_frequency.png",
                    class_names=list(class_names),
                    groups=groups,
                    title=f"Per-class AP ({split}, last epoch) against training frequency",
                ),
            )
        return written

    def _plot_records(
        self,
        folder: Path,
        split: str,
        attempt: Any,
        warmup_epochs: int | None = None,
        select_metric: str | None = None,
    ) -> None:
        """Loss terms, mAP by group and the NC diagnostics over the epochs of the records."""
        from mlcnc import plots

        epochs = [r["epoch"] for r in self.records]
        terms = sorted({k for r in self.records for k in r if k.startswith("loss/")})
        if terms:
            attempt(
                "loss terms",
                lambda: plots.plot_loss_terms(
                    {t.removeprefix("loss/"): _series(t, self.records) for t in terms},
                    folder / "loss_terms.png",
                    x=epochs,
                    x_label="epoch",
                    # records are at the end of each epoch: warm-up epochs 1..W end at W
                    warmup_end=warmup_epochs if warmup_epochs else None,
                ),
            )
        evaluated = [r for r in self.records if f"{split}/map_total" in r]
        if not evaluated:
            return
        eval_epochs = [r["epoch"] for r in evaluated]
        regular = {g: _series(f"{split}/map_{g}", evaluated) for g in GROUPS}
        ema = None
        if f"{split}_ema/map_total" in evaluated[-1]:
            ema = {g: _series(f"{split}_ema/map_{g}", evaluated) for g in GROUPS}
        selection = None
        if select_metric and any(select_metric in r for r in evaluated):
            selection = (select_metric, _series(select_metric, evaluated))
        attempt(
            "mAP by group",
            lambda: plots.plot_map_by_group(
                eval_epochs,
                regular,
                folder / "map_by_group.png",
                ema=ema,
                title=f"mAP by class group ({split})",
                selection=selection,
            ),
        )
        nc = {
            k: _series(f"{split}/{k}", evaluated)
            for k in NC_KEYS
            if f"{split}/{k}" in evaluated[-1]
        }
        if nc:
            attempt(
                "neural collapse",
                lambda: plots.plot_neural_collapse(eval_epochs, nc, folder / "neural_collapse.png"),
            )


def _series(key: str, records: list[dict[str, Any]]) -> list[float]:
    return [_float(r.get(key)) for r in records]


def refuse_message(path: Path, found: Sequence[str]) -> str:
    """Why a new run may not start in ``path`` and what to do instead."""
    shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
    return (
        f"run folder {path} already holds a run ({shown}); continue it with --resume {path}, "
        "replace it with --overwrite, or choose another --output"
    )


def _csv_text(records: Sequence[Mapping[str, Any]]) -> str:
    if not records:
        return ""
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)
