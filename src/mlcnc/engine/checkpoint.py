"""Checkpoints: plain dicts of tensors and plain types, written atomically.

``torch.load(path, weights_only=True)`` reads them (no pickled objects). A save writes a
temporary file beside the target (a name unique to the process: pid and a random token, so
two processes never share one), flushes it to disk and renames it over the target
(``os.replace`` is atomic), so an interrupted save or a full disk leaves the previous
checkpoint as it was.

``load_checkpoint`` refuses, with one ``CheckpointError`` line naming the file, a file that
is missing, empty, truncated, not a PyTorch file, holds pickled Python objects, lacks the
keys of an mlcnc checkpoint, or has a ``format`` newer than this mlcnc reads.

What the training loop stores besides the weights (see ``engine.setup.Run.checkpoint_state``):
``history`` (every epoch record so far: the run folder's metrics files are rebuilt from it
on resume), ``best`` (the record of the best epoch on val), ``selection``, ``precision``,
``test_ap`` (per-class test AP of the last evaluation) and ``data`` (class names and a
fingerprint of the training split, compared on resume).

Formats: every checkpoint carries ``format`` (``FORMAT``, now 2). A checkpoint without it is
format 1: what mlcnc wrote before the key existed, including older files that lack some of
the keys above. ``load_checkpoint`` passes every state through ``upgrade_checkpoint``, the
one place that knows older formats: the rest of mlcnc reads the current form only. An
upgraded state says what it was: ``upgraded_from`` (its format) and ``filled`` (the keys
the file lacked and the upgrade filled in), for the notes that tell a user a checkpoint
comes from an older mlcnc.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlcnc.data.readers import DataError
from mlcnc.io import write_atomic

LAST = "last.ckpt"
BEST = "best.ckpt"
CHECKPOINT_DIR = "checkpoints"
RUN_CHECKPOINT_NAME = re.compile(r"(best|last|epoch-[0-9]{4,})\.ckpt")
"""The names of the checkpoints a run writes in its ``checkpoints/``: best.ckpt, last.ckpt
and the history ``epoch-NNNN.ckpt`` (``train.checkpoint_history``); any other file there is
the user's (a copy, an export) and ``--overwrite`` keeps it."""
REQUIRED_KEYS = ("model", "config", "class_names", "class_freq")
FORMAT = 2
"""The checkpoint format this mlcnc writes (2: ``format`` recorded; 1: none recorded)."""

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_MAGIC = b"\x80"  # the legacy format: a pickle stream (protocol >= 2)


class CheckpointError(DataError):
    """A file that is not a usable mlcnc checkpoint; the message names it and says why."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """The checkpoint (or run folder) named does not exist."""


def check_finite_weights(weights: dict[str, Any], path: str | Path, variant: str) -> None:
    """Refuse weights holding NaN or inf (a damaged or hand-edited file): they score every
    image alike, and evaluate / predict / export would pass them off as a model. One line
    naming the checkpoint and the first bad tensor."""
    for name, value in weights.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise CheckpointError(
                    f"{path}: its {variant} weights hold NaN or infinite values ({name}: "
                    f"{bad} of {value.numel()}); the file is damaged: use another checkpoint "
                    "or retrain"
                )


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (``mlcnc.io.write_atomic``: unique temp file,
    ``torch.save`` into it, fsync, rename)."""
    return write_atomic(path, writer=lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); a one-line ``CheckpointError``
    naming the file for anything that is not an mlcnc checkpoint."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
        raise MissingCheckpointError(f"checkpoint {path} {what}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CheckpointError(f"checkpoint {path} is an empty file (0 bytes)")
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint file (it starts with {head!r}); give a "
            f"run folder or its {CHECKPOINT_DIR}/{LAST}"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise CheckpointError(
                f"{path} holds pickled Python objects, which mlcnc refuses to load (unpickling "
                "can run arbitrary code); an mlcnc checkpoint holds tensors and plain types only"
            ) from error
        raise CheckpointError(f"{path} is truncated or corrupt: {_first_line(error)}") from error
    except (RuntimeError, OSError, EOFError) as error:
        raise CheckpointError(
            f"{path} is truncated or corrupt (not a complete checkpoint file; was it copied "
            f"while being written?): {_first_line(error)}"
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} is not an mlcnc checkpoint: it holds a {type(state).__name__}, not a dict"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not an mlcnc checkpoint: it lacks {', '.join(missing)}")
    check_types(state, path)
    return upgrade_checkpoint(state, path)


_TYPES: dict[str, tuple[type, ...]] = {
    "model": (dict,),
    "config": (dict,),
    "class_names": (list, tuple),
    "epoch": (int,),
    "step": (int,),
    "format": (int,),
    "criterion": (dict,),
    "optimizer": (dict,),
    "scheduler": (dict,),
    "ema": (dict, type(None)),
    "best": (dict, type(None)),
    "selection": (dict, type(None)),
    "history": (list, type(None)),
    "data": (dict, type(None)),
}
"""The type of each key an mlcnc checkpoint holds (where present)."""


def check_types(state: dict[str, Any], path: str | Path) -> None:
    """Refuse (one line naming the file and key) a checkpoint whose values have the wrong
    type: a malformed file must not reach the code that reads it as a traceback."""
    for key, types in _TYPES.items():
        if key in state and (
            not isinstance(state[key], types) or (isinstance(state[key], bool) and int in types)
        ):
            raise CheckpointError(
                f"{path} is malformed: its {key!r} is a {type(state[key]).__name__}, not "
                f"{' or '.join(t.__name__ for t in types)}"
            )
    if not all(isinstance(n, str) for n in state["class_names"]):
        raise CheckpointError(f"{path} is malformed: its class_names are not all strings")
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise CheckpointError(f"{path} is malformed: its model weights are not all tensors")


def upgrade_checkpoint(state: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """``state`` in the current format (``FORMAT``), the one place that knows older ones.

    Format 1 (no ``format`` key; the files of earlier mlcnc releases) is upgraded by filling
    each key the file lacks with what a run without it means: no EMA weights, best record,
    selection or test AP (None); no metrics ({}); no epoch history (None: the records come
    from the run folder's metrics.jsonl); no data record beyond the class names (no
    fingerprint); the precision its config asked for; no ``num_train_samples`` (None).
    The state records ``upgraded_from`` (1) and ``filled`` (the keys filled in). A format
    newer than ``FORMAT`` is refused with a one-line ``CheckpointError`` naming the file.
    """
    found = state.get("format", 1)
    if not isinstance(found, int) or found < 1:
        raise CheckpointError(f"{path} is not an mlcnc checkpoint: its format is {found!r}")
    if found > FORMAT:
        raise CheckpointError(
            f"{path} is a format-{found} checkpoint of a newer mlcnc; this mlcnc reads formats "
            f"up to {FORMAT}: update mlcnc to use it"
        )
    config = state["config"] if isinstance(state["config"], dict) else {}
    train_cfg = config.get("train") or {}
    defaults: dict[str, Any] = {
        "ema": None,
        "metrics": {},
        "best": None,
        "selection": None,
        "precision": train_cfg.get("precision", "auto"),
        "history": None,
        "test_ap": None,
        "num_train_samples": None,
        "data": {"class_names": list(state["class_names"])},
    }
    if found == FORMAT:
        missing = [key for key in defaults if key not in state]
        if missing:
            raise CheckpointError(
                f"{path} is not a complete format-{FORMAT} mlcnc checkpoint: it lacks "
                f"{', '.join(missing)} (was it edited?)"
            )
        return state
    filled = [key for key in defaults if state.get(key) is None and defaults[key] is not None]
    filled += [key for key in defaults if key not in state and defaults[key] is None]
    if "fingerprint" not in (state.get("data") or {}):
        filled.append("data")  # a data record without a fingerprint: the class names only
    state = {**state, **{key: defaults[key] for key in set(filled)}}
    state.update(format=FORMAT, upgraded_from=found, filled=sorted(set(filled)))
    return state


def filled_by_upgrade(state: dict[str, Any], key: str) -> bool:
    """Whether ``key`` of a loaded checkpoint was missing from its file (an older mlcnc's
    checkpoint, see ``upgrade_checkpoint``)."""
    return key in state.get("filled", ())


def _first_line(error: BaseException) -> str:
    """The first sentence of an error message (torch's go on for a paragraph)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line.split(". ")[0].rstrip(".")


def is_run_checkpoint_name(name: str) -> bool:
    """Whether ``name`` is one a run gives its checkpoints (``RUN_CHECKPOINT_NAME``)."""
    return RUN_CHECKPOINT_NAME.fullmatch(name) is not None


def is_training_checkpoint(path: str | Path) -> bool:
    """Whether the file at ``path`` is an mlcnc training checkpoint (it holds the optimizer
    state a run resumes from; a weights export does not). Read lazily (``mmap``): a
    file that cannot be read as one is not one."""
    path = Path(path)
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            if not f.read(4).startswith(_ZIP_MAGIC):
                return False
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a (readable) torch zip file: not a checkpoint
        return False
    return isinstance(state, dict) and set(REQUIRED_KEYS) <= set(state) and "optimizer" in state


def checkpoint_run_dir(path: str | Path) -> Path | None:
    """The run folder a checkpoint file belongs to (``<run>/checkpoints/x.ckpt`` -> ``<run>``),
    or None for a loose checkpoint file."""
    path = Path(path)
    return path.parent.parent if path.parent.name == CHECKPOINT_DIR else None


def resolve_checkpoint(run_dir_or_ckpt: str | Path, name: str = LAST) -> Path:
    """A checkpoint file, or the ``name`` checkpoint of a run folder."""
    path = Path(run_dir_or_ckpt)
    if path.is_dir():
        candidate = path / CHECKPOINT_DIR / name
        if not candidate.is_file():
            raise MissingCheckpointError(f"run folder {path} has no {CHECKPOINT_DIR}/{name}")
        return candidate
    if not path.is_file():
        raise MissingCheckpointError(f"{path} is neither a run folder nor a checkpoint file")
    return path


def plain_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict with tensors detached and moved to the CPU."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------
# the data a checkpoint was trained on


def data_fingerprint(
    image_paths: Iterable[str | Path],
    labels: np.ndarray,
    class_names: list[str],
    source: str | Path | None = None,
) -> str:
    """SHA-256 over the sorted (image path, label names) pairs of a split.

    Paths are taken relative to the folder of ``source`` (the CSV or split file) where they
    lie under it, so a dataset moved as a whole keeps its fingerprint; label names rather
    than column indices, so the fingerprint does not depend on the class order (which is
    compared on its own).
    """
    base = Path(source).parent if source else None
    names = np.asarray(class_names, dtype=object)
    lines = []
    for path, row in zip(image_paths, np.asarray(labels), strict=True):
        path = Path(path)
        if base is not None:
            with contextlib.suppress(ValueError):  # a path outside the folder stays as it is
                path = path.relative_to(base)
        lines.append(f"{path.as_posix()}\t{';'.join(sorted(names[row.astype(bool)]))}")
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def data_record(split: Any, eval_splits: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint keeps about its training split (a ``MultiLabelSplit``) and, under
    ``eval``, the fingerprint of each evaluation split (val, test): a resumed run whose test
    set changed would mix two test sets in metrics.jsonl."""
    record = {
        "class_names": list(split.class_names),
        "num_images": len(split.image_paths),
        "fingerprint": _fingerprint(split),
        "source": str(split.source),
    }
    if eval_splits:
        record["eval"] = {
            name: {"fingerprint": _fingerprint(s), "num_images": len(s.image_paths),
                   "source": str(s.source)}
            for name, s in eval_splits.items()
        }  # fmt: skip
    return record


def _fingerprint(split: Any) -> str:
    return data_fingerprint(split.image_paths, split.labels, list(split.class_names), split.source)


def compare_eval_data(state: dict[str, Any], eval_splits: dict[str, Any]) -> list[str]:
    """The evaluation splits (val, test) that differ from those ``state`` recorded; a
    checkpoint without the record (older) is not compared."""
    saved = (state.get("data") or {}).get("eval") or {}
    problems = []
    for name in sorted(set(saved) | set(eval_splits)):
        then, now = saved.get(name), eval_splits.get(name)
        if not saved:
            break
        if then is None or now is None:
            problems.append(f"the {name} split ({'added' if then is None else 'removed'} since)")
        elif then["fingerprint"] != _fingerprint(now):
            problems.append(
                f"the {name} split's images or labels ({now.source}: {then['num_images']} "
                f"images then, {len(now.image_paths)} now)"
            )
    return problems


def compare_data(state: dict[str, Any], split: Any, path: str | Path) -> tuple[list[str], str]:
    """Differences between the data ``state`` (a checkpoint at ``path``) was trained on and
    ``split``: (problems, note). ``problems`` is empty when they agree; ``note`` says what
    could not be compared (an older checkpoint without a fingerprint)."""
    saved_names = list(state["class_names"])
    names = list(split.class_names)
    problems = []
    if len(saved_names) != len(names):
        added = [n for n in names if n not in saved_names]
        removed = [n for n in saved_names if n not in names]
        detail = ", ".join(
            part
            for part in (
                f"added {', '.join(added[:5])}" if added else "",
                f"removed {', '.join(removed[:5])}" if removed else "",
            )
            if part
        )
        problems.append(
            f"the number of classes: {len(saved_names)} in {path}, {len(names)} in "
            f"{split.source}" + (f" ({detail})" if detail else "")
        )
    elif saved_names != names:
        if sorted(saved_names) == sorted(names):
            moved = [n for n, s in zip(names, saved_names, strict=True) if n != s]
            problems.append(
                f"the class order ({len(moved)} class(es) moved, e.g. {moved[0]!r}; resuming "
                "relabels the model's class columns)"
            )
        else:
            changed = [n for n in names if n not in saved_names]
            problems.append(f"the class names ({', '.join(changed[:5])} not in {path})")
    saved = state["data"]
    note = ""
    if filled_by_upgrade(state, "data"):
        note = (
            f"{path} was written by an older mlcnc without a fingerprint of its training "
            "data: only the class names were compared"
        )
    elif not problems:
        current = data_record(split)
        if current["fingerprint"] != saved["fingerprint"]:
            count = (
                f"{saved.get('num_images')} images then, {current['num_images']} now"
                if saved.get("num_images") != current["num_images"]
                else f"{current['num_images']} images, but other paths or labels"
            )
            problems.append(f"the training images or their labels ({count})")
    return problems, note
