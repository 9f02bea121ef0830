"""Writing files: one atomic write, one JSON cleaner.

``write_atomic`` writes to a temporary file beside the target, with a name unique to the
process and the call (pid and a random token: two processes never share one), flushes it to
disk and renames it over the target (``os.replace`` is atomic), so a reader or a kill never
sees half a file and an interrupted write leaves the previous file as it was. The temporary
names match ``.*.tmp``, which a run folder's owner removes on resume.

``jsonable`` turns a value into what strict JSON can hold: non-finite floats become null,
numpy scalars and arrays Python numbers and lists, paths strings, tuples lists. ``write_json``
writes such a value atomically (``allow_nan=False``: a NaN never reaches a file).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePath
from typing import IO, Any

import numpy as np


def temporary_name(path: str | Path) -> Path:
    """A hidden temporary file beside ``path``, unique to this process and call."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def write_atomic(
    path: str | Path,
    data: bytes | str | None = None,
    *,
    writer: Callable[[IO[bytes]], Any] | None = None,
    mode: int | None = None,
) -> Path:
    """Write ``data`` (text is UTF-8) or what ``writer(file)`` writes into a binary file
    to ``path`` atomically: unique temporary file in the target's folder, fsync, rename.
    ``mode``: the file's permissions (default: those a new file gets)."""
    if (data is None) == (writer is None):
        raise TypeError("write_atomic takes either data or writer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            if writer is not None:
                writer(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as error:  # a full disk, a read-only folder: name the file written
        tmp.unlink(missing_ok=True)
        if error.filename is None or str(error.filename) == str(tmp):
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def open_atomic(path: str | Path, **text: Any) -> Iterator[IO[str]]:
    """A text file to write ``path`` through, atomically: ``write_atomic`` of what the
    ``with`` block wrote, only when it ends without an error (an interrupt leaves ``path``
    as it was). ``text``: ``open``'s text options (``newline``, ``encoding``, ``errors``)."""
    text.setdefault("encoding", "utf-8")
    buffer = io.StringIO(newline=text.pop("newline", None))
    yield buffer
    data = buffer.getvalue().encode(text["encoding"], text.get("errors", "strict"))
    write_atomic(path, data)


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON can hold it: NaN / inf -> None, numpy scalars and arrays ->
    Python numbers and lists, paths -> str, tuples -> lists (dicts and lists recursively)."""
    if isinstance(value, Mapping):
        return {str(k) if isinstance(k, PurePath) else k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; None marks "not available"
    return value


def json_text(value: Any, indent: int | None = 2) -> str:
    """``value`` cleaned by ``jsonable`` as JSON text ending in a newline."""
    return json.dumps(jsonable(value), indent=indent, allow_nan=False) + "\n"


def write_json(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    """``value`` cleaned by ``jsonable``, written to ``path`` atomically."""
    return write_atomic(path, json_text(value, indent))
