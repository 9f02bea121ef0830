"""mlcnc.io: the one atomic write and the one JSON cleaner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mlcnc.io import jsonable, temporary_name, write_atomic, write_json


def test_write_atomic_writes_text_bytes_or_a_writer_and_leaves_no_temporary(tmp_path) -> None:
    target = tmp_path / "sub" / "a.txt"
    write_atomic(target, "héllo\n")
    assert target.read_bytes() == "héllo\n".encode()
    write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    write_atomic(target, writer=lambda f: f.write(b"from a writer"))
    assert target.read_bytes() == b"from a writer"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path) -> None:
    target = tmp_path / "a.txt"
    write_atomic(target, "old")

    def broken(f) -> None:
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, writer=broken)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_temporary_names_are_per_process_in_the_targets_folder(tmp_path) -> None:
    name = temporary_name(tmp_path / "x.json")
    assert name.parent == tmp_path and name.name.startswith(f".x.json.{os.getpid()}-")
    assert name.name.endswith(".tmp")


def test_jsonable_gives_strict_json() -> None:
    value = {
        "nan": float("nan"),
        "inf": np.float32("inf"),
        "int": np.int64(3),
        "array": np.array([1.5, np.nan]),
        "path": Path("/a/b"),
        "tuple": (1, np.float64(2.5)),
    }
    assert jsonable(value) == {
        "nan": None,
        "inf": None,
        "int": 3,
        "array": [1.5, None],
        "path": "/a/b",
        "tuple": [1, 2.5],
    }
    json.dumps(jsonable(value), allow_nan=False)


def test_write_json_never_writes_a_bare_nan(tmp_path) -> None:
    path = write_json(tmp_path / "r.json", {"map": {"total": float("nan")}})
    assert "NaN" not in path.read_text()
    assert json.loads(path.read_text()) == {"map": {"total": None}}
