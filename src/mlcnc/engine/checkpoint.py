"""Checkpoints: plain dicts of tensors and plain types, written atomically.

``torch.load(path, weights_only=True)`` reads them (no pickled objects). A save writes a
temporary file beside the target, flushes it to disk and renames it over the target
(``os.replace`` is atomic), so an interrupted save or a full disk leaves the previous
checkpoint as it was.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

LAST = "last.ckpt"
BEST = "best.ckpt"
CHECKPOINT_DIR = "checkpoints"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); a clear error for a wrong file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable mlcnc checkpoint: {error}") from error
    missing = [k for k in ("model", "config", "class_names", "class_freq") if k not in state]
    if missing:
        raise ValueError(f"{path} is not an mlcnc checkpoint: it lacks {', '.join(missing)}")
    return state


def resolve_checkpoint(run_dir_or_ckpt: str | Path, name: str = LAST) -> Path:
    """A checkpoint file, or the ``name`` checkpoint of a run folder."""
    path = Path(run_dir_or_ckpt)
    if path.is_dir():
        candidate = path / CHECKPOINT_DIR / name
        if not candidate.is_file():
            raise FileNotFoundError(f"run folder {path} has no {CHECKPOINT_DIR}/{name}")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"{path} is neither a run folder nor a checkpoint file")
    return path


def plain_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict with tensors detached and moved to the CPU."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}
