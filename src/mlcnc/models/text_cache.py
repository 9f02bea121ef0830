"""On-disk cache of CLIP label text embeddings (vlm-spec 4.2 item 4).

``$MLCNC_HOME/text_embeddings/<config>-<key>.safetensors`` (``MLCNC_HOME`` defaults to
``~/.cache/mlcnc``, as for the benchmarks) holds the (C, d) float32 embeddings that
``models.clip.class_text_embeddings`` builds from class names and prompt templates, so a
second run with the same CLIP weights skips the text tower. The key is a SHA-256 of the
open_clip config, the weights (the tag ``openai`` for ``pretrained=True``, the SHA-256 of a
local weights file) and the names and templates, each in order. Only pretrained weights are
cached: a random tower (``pretrained=False``) differs from run to run. Files are written
atomically (``mlcnc.io.write_atomic``) and read with safetensors (no pickle); a file that
cannot be read or does not match its key is rebuilt and replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

FORMAT = 1
"""Bumped when the way embeddings are built changes, so older files are not reused."""
FOLDER = "text_embeddings"
TENSOR = "embeddings"

_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def cache_folder() -> Path:
    """``$MLCNC_HOME/text_embeddings``."""
    from mlcnc.data.benchmarks import mlcnc_home

    return mlcnc_home() / FOLDER


def weights_id(pretrained: bool | str | os.PathLike | None) -> str | None:
    """What identifies the weights: ``openai`` (``True``, open_clip's tag), ``sha256:<hex>``
    of a local file, or None (random weights, or a file that is not there: not cached)."""
    if pretrained is True:
        return "openai"
    if not pretrained or isinstance(pretrained, bool):
        return None
    path = Path(pretrained).expanduser()
    if not path.is_file():
        return None
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:  # hash a large file once per process
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _FILE_HASHES[key] = f"sha256:{digest.hexdigest()}"
    return _FILE_HASHES[key]


def cache_metadata(
    config: str, weights: str, names: Sequence[str], templates: Sequence[str]
) -> dict[str, str]:
    """The strings a cache file is keyed by and stores (safetensors metadata)."""
    return {
        "format": str(FORMAT),
        "config": config,
        "weights": weights,
        "names": json.dumps(list(names)),
        "templates": json.dumps(list(templates)),
    }


def cache_file(metadata: dict[str, str]) -> Path:
    """The file of ``metadata``: ``<config>-<first 24 hex digits of its SHA-256>``."""
    key = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()[:24]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", metadata["config"])
    return cache_folder() / f"{safe}-{key}.safetensors"


def load_cached(path: Path, metadata: dict[str, str]) -> Tensor | None:
    """The cached (C, d) embeddings, or None when the file is missing, unreadable or made
    for other inputs."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if f.metadata() != metadata:
                return None
            tensor = f.get_tensor(TENSOR)
    except (OSError, ValueError, KeyError, SafetensorError):  # truncated or foreign: rebuilt
        return None
    names = json.loads(metadata["names"])
    if tensor.ndim != 2 or tensor.shape[0] != len(names) or not torch.isfinite(tensor).all():
        return None
    return tensor.float()


def save_cached(path: Path, embeddings: Tensor, metadata: dict[str, str]) -> Path:
    """Write ``embeddings`` (C, d) with ``metadata`` atomically; an unwritable cache folder
    only costs the next run the text tower (a warning)."""
    import warnings

    from safetensors.torch import save

    from mlcnc.io import write_atomic

    data = save({TENSOR: embeddings.detach().float().cpu().contiguous()}, metadata=metadata)
    try:
        return write_atomic(path, data)
    except OSError as error:
        warnings.warn(f"text-embedding cache not written ({path}: {error})", stacklevel=2)
        return path
