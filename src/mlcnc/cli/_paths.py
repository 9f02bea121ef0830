"""The one guard for every path a command writes (``--out``, ``--output``, ``--json``,
``--plot``, run folders, export files, predictions, attention folders, benchmark output).

``check_output`` refuses, in one line and before anything is written, an output that is:

- an input of the command (an image, CSV, config or checkpoint it was given);
- a file of a run folder the command reads (its ``checkpoints/``, ``config.yaml``,
  metrics, ``per_class.csv``, ``result.json``), or that run folder itself;
- another output of the same command (``--json`` and ``--predictions`` at one path);
- an existing folder where a file is written, or an existing file where a folder is;
- an existing file, unless the command was given ``--overwrite`` (every command that writes
  a file has it): nothing the user has is replaced silently. For a folder output, the files
  the command writes inside it (``files``: names or glob patterns) are those existing files;
- in a run's ``checkpoints/``, only an earlier export (``exports``: the suffixes a command
  exports, never ``.ckpt``) may be replaced, and only with ``--overwrite``.

Paths are compared after resolving symbolic links and ``..``, so a link to an input is the
input. The error is a ``DataError`` (exit 1), printed as one line by ``mlcnc.cli``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

RUN_OWN_FILES = (
    "config.yaml",
    "metrics.jsonl",
    "metrics.csv",
    "per_class.csv",
    "result.json",
    "selection.json",
    "thresholds.json",
)
"""Files of a run folder that no output of a command may replace."""


def resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``~``, symbolic links and ``..`` resolved (the file need not exist)."""
    try:
        return Path(path).expanduser().resolve()
    except RuntimeError:  # a symbolic link loop (Python < 3.13)
        return Path(os.path.abspath(Path(path).expanduser()))
    except OSError:  # e.g. a link loop (Python >= 3.13)
        return Path(os.path.abspath(Path(path).expanduser()))


def run_folder_of(checkpoint: str | os.PathLike[str]) -> Path | None:
    """The run folder a checkpoint (or run folder) given to a command belongs to."""
    path = resolved(checkpoint)
    if path.is_dir():
        return path
    if path.parent.name == "checkpoints":
        return path.parent.parent
    return None


def data_files(run_dir: Path | None) -> list[str]:
    """The data files (CSVs, roots) a run folder's config.yaml names: inputs of a command
    that reads the run's data (``evaluate``), which no output may replace."""
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return []
    try:
        from mlcnc.engine.resume import read_run_config

        data = read_run_config(run_dir / "config.yaml").get("data") or {}
    except Exception:  # the command itself reports an unreadable run
        return []
    return [v for v in data.values() if isinstance(v, str) and v] if isinstance(data, dict) else []


def check_output(
    path: str | os.PathLike[str] | None,
    *,
    option: str,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    runs: Iterable[str | os.PathLike[str] | None] = (),
    folder: bool = False,
    overwrite: bool = False,
    outputs: dict[str, str | os.PathLike[str] | None] | None = None,
    files: Iterable[str] = (),
    exports: Iterable[str] = (),
) -> Path | None:
    """Refuse ``path`` as the output of ``option`` (see the module doc); returns it resolved.

    ``inputs``: files the command reads; ``runs``: run folders it reads; ``folder``: the
    output is a folder (else a file); ``overwrite``: the command's ``--overwrite`` (an
    existing file is refused without it); ``outputs``: the command's other outputs by option;
    ``files``: what a folder output gets inside it; ``exports``: suffixes of files in a read
    run's ``checkpoints/`` that ``--overwrite`` may replace (the command's own exports)."""
    from mlcnc.data.readers import DataError

    if path is None:
        return None
    given = Path(path)
    if "\0" in str(given):
        raise DataError(f"{option} {given!s:.200}: a path cannot hold a NUL byte")
    target = resolved(given)

    def refuse(why: str) -> DataError:
        return DataError(f"{option} {given}: {why}; nothing was written, choose another path")

    for item in inputs:
        if item is not None and resolved(item) == target:
            raise refuse(f"it is an input of the command ({item}): writing it would overwrite it")
    for other, item in (outputs or {}).items():
        if item is not None and resolved(item) == target:
            raise refuse(
                f"it is also the path given to {other}: two outputs of the command at one path"
            )
    export = target.suffix in set(exports) and target.suffix != ".ckpt" and target.is_file()
    for run in runs:
        if run is None:
            continue
        run = resolved(run)
        if target == run:
            raise refuse(f"it is the run folder {run} that the command reads")
        if target == run / "checkpoints" or (
            run / "checkpoints" in target.parents
            and (target.suffix == ".ckpt" or (target.exists() and not export))
        ):
            raise refuse(f"it is (in) {run / 'checkpoints'}, the run's checkpoints")
        if target.parent == run and target.name in RUN_OWN_FILES:
            raise refuse(f"it is the run's own {target.name}")
    _refuse_any_checkpoint(target, export, refuse)
    if folder:
        if target.exists() and not target.is_dir():
            raise refuse("it is an existing file, and a folder is written there")
        found = (
            sorted({f.name for name in files for f in target.glob(name)}) if target.is_dir() else []
        )
        if found and not overwrite:
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            raise DataError(
                f"{option} {given}: the folder already holds {shown}, which the command writes; "
                "pass --overwrite to replace them, or choose another folder"
            )
    else:
        if target.is_dir():
            raise refuse("it is an existing folder, and a file is written there")
        if target.exists() and not target.is_file():
            raise refuse("it is not a regular file (a device, pipe or socket)")
        if not overwrite and target.exists():
            what = "holds an earlier export (not a checkpoint)" if export else "already exists"
            raise DataError(f"{option} {given}: {what}; pass --overwrite to replace it")
    _check_writable_parent(target, refuse)
    return target


def _refuse_any_checkpoint(target: Path, export: bool, refuse: Callable[[str], Exception]) -> None:
    """Any run's checkpoints, not only those of the runs the command reads, with or without
    ``--overwrite``: a file in the ``checkpoints/`` of a folder that holds an mlcnc run (but
    an earlier export there), and any file that is an mlcnc training checkpoint."""
    from mlcnc.engine.checkpoint import CHECKPOINT_DIR, is_training_checkpoint
    from mlcnc.engine.run_folder import holds_mlcnc_run

    folder = target.parent
    if (
        folder.name == CHECKPOINT_DIR
        and (target.suffix == ".ckpt" or (target.exists() and not export))
        and holds_mlcnc_run(folder.parent)
    ):
        raise refuse(f"it is (in) {folder}, the checkpoints of the run folder {folder.parent}")
    if target.is_file() and is_training_checkpoint(target):
        raise refuse("it is an mlcnc training checkpoint (a run can resume from it)")


def _check_writable_parent(target: Path, refuse: Callable[[str], Exception]) -> None:
    """The nearest existing folder above ``target`` must be a writable folder."""
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise refuse(f"{parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise refuse(f"the folder {parent} is not writable")
            return
