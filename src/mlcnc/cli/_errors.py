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


def is_out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError, CUDA's OutOfMemoryError or the CPU allocator's RuntimeError."""
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text.lower() or "can't allocate memory" in text
    )


LOWER = {
    "train": "optim.batch_size or data.image_size (or data.num_workers)",
    "benchmark": "optim.batch_size or data.image_size (or --jobs)",
}
"""What to lower when a command runs out of memory (else its --batch-size)."""


def out_of_memory_line(error: BaseException, command: str) -> str:
    """One line for running out of memory: what ran out and what to lower."""
    import re

    text = str(error)
    found = re.search(r"allocate (\d+) bytes", text) or re.search(
        r"[Tt]ried to allocate ([\d.]+ [KMGT]iB)", text
    )
    if found is None:
        detail = type(error).__name__
    elif found.group(1).isdigit():
        detail = f"could not allocate {int(found.group(1)) / 2**20:,.0f} MiB more"
    else:
        detail = f"could not allocate {found.group(1)} more"
    return f"out of memory ({detail}); lower {LOWER.get(command, '--batch-size')}"
