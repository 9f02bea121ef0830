"""What the commands print for an error that is not a config or data error but still the
user's to fix (a bad image met while reading a split, a non-finite loss)."""

from __future__ import annotations


def error_line(error: BaseException) -> str:
    """The line of ``error`` that says what went wrong: its message, or for an error a
    DataLoader worker passed on (a traceback in the message), the original error's line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught "):
        name, _, message = lines[-1].partition(": ")
        line = message or name
    else:
        line = lines[0] if lines else type(error).__name__
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


MAX_LINE = 500
"""An error line is cut to this many characters (a value quoted in it may be huge)."""
