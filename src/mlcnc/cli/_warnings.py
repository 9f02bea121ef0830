"""Warnings as users read them: one line, ``mlcnc: warning: <message>``, without the source
file and line of the library that raised it (``--debug`` keeps Python's format)."""

from __future__ import annotations

import contextlib
import os
import sys
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
    before, shown = warnings.formatwarning, warnings.showwarning
    warnings.formatwarning = one_line
    # Lightning replaces formatwarning when it is imported (inside the command), so the
    # printing itself is replaced too -- unless warnings are being recorded (a test's
    # catch_warnings(record=True)), which must keep receiving them.
    printing = getattr(warnings, "_showwarnmsg_impl", None)
    if shown is warnings._showwarning_orig and getattr(printing, "__name__", "") == (
        "_showwarnmsg_impl"
    ):
        warnings.showwarning = _show
    try:
        yield
    finally:
        warnings.formatwarning, warnings.showwarning = before, shown


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` writing ``one_line`` to stderr (or ``file``)."""
    stream = sys.stderr if file is None else file
    with contextlib.suppress(OSError):  # stderr gone: a warning must never stop a command
        stream.write(one_line(message, category, filename, lineno, line))


@contextlib.contextmanager
def no_srun_hint() -> Iterator[None]:
    """Without Lightning's "The `srun` command is available on your system but is not used"
    outside a SLURM job: mlcnc's own launcher (``mlcnc.launch``) starts SLURM work, and a
    command run outside any allocation has no use for srun. Inside a job
    (``SLURM_JOB_ID`` set) the hint stays: there a missing srun is a real mistake."""
    with warnings.catch_warnings():
        if "SLURM_JOB_ID" not in os.environ:
            warnings.filterwarnings("ignore", message="The `srun` command is available")
        yield
