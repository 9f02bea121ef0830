"""Warnings as users read them: one line, ``mlcnc: warning: <message>``, without the source
file and line of the library that raised it (``--debug`` keeps Python's format)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


def one_line(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` without the source path: the message on one line."""
    text = " ".join(str(message).split())
    kind = "" if category in (UserWarning, RuntimeWarning) else f" ({category.__name__})"
    return f"mlcnc: warning{kind}: {text}\n"


@contextlib.contextmanager
def one_line_warnings(enabled: bool = True) -> Iterator[None]:
    """Format the warnings shown inside the block with ``one_line`` (restored after)."""
    if not enabled:
        yield
        return
    before = warnings.formatwarning
    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = before
