"""Names that look right but are not what they seem, each refused naming what it is:

- a path written with Windows separators (``images\\a.png``), which is one file name on
  Linux and macOS (``windows_separator_hint``);
- one class name in two Unicode normal forms (``café`` composed, NFC, and decomposed, NFD:
  equal on screen, different strings), in a class list, or between a CSV and its class list
  (``normal_form``, ``refuse_normal_form_twins``, ``other_form_hint``);
- a special file (a named pipe, a device, a socket) given as a text file: reading it would
  wait forever or read without end (``refuse_special_file``).
"""

from __future__ import annotations

import os
import stat
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path


def special_file_kind(path: str | Path) -> str | None:
    """``named pipe (FIFO)``, ``device``, ``socket`` for such a file (links followed); None
    for a regular file, a folder, or a path that does not exist."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return None


def refuse_special_file(path: str | Path, what: str, shown: str, error: type) -> None:
    """``error`` (one line) when ``path`` is a pipe, device or socket instead of a file."""
    kind = special_file_kind(path)
    if kind is not None:
        raise error(
            f"{shown}: is a {kind}, not a {what}; reading it would wait for a writer or "
            f"never end. Give a regular file (save the {what} to disk first)"
        )


def windows_separator_hint(path: str | Path) -> str | None:
    """For a path that was not found and holds ``\\``: what it is (a Windows separator,
    which is an ordinary character in a file name here), and the file it meant when that
    exists."""
    text = os.fsdecode(path)
    if os.sep == "\\" or "\\" not in text:
        return None
    meant = text.replace("\\", "/")
    there = " (that file exists)" if os.path.exists(meant) else ""
    return (
        "the path uses Windows separators '\\', which are ordinary characters in a file name "
        f"here; write '/' in the CSV: {meant}{there}"
    )


def normal_form(name: str) -> str:
    """``NFC`` or ``NFD`` (or ``mixed``) for a name whose forms differ, else ``""``."""
    if unicodedata.is_normalized("NFC", name) and unicodedata.is_normalized("NFD", name):
        return ""
    if unicodedata.is_normalized("NFC", name):
        return "NFC"
    if unicodedata.is_normalized("NFD", name):
        return "NFD"
    return "mixed"


def refuse_normal_form_twins(
    names: Iterable[tuple[str, str]], error: type, fix: str = "save the files in NFC"
) -> None:
    """``names``: (name, where it is). Two different names equal after Unicode NFC
    normalisation are one error naming both forms and where each is."""
    first: dict[str, tuple[str, str]] = {}
    for name, where in names:
        key = unicodedata.normalize("NFC", name)
        if key in first and first[key][0] != name:
            other, other_where = first[key]
            raise error(
                f"{where}: class name {name!r} ({normal_form(name)}) is {other!r} "
                f"({normal_form(other)}, {other_where}) in another Unicode normal form: the "
                f"same name on screen, two different classes to mlcnc; {fix}"
            )
        first.setdefault(key, (name, where))


def other_form_hint(name: str, known: Sequence[str]) -> str | None:
    """For an unknown class name: the known name it equals in another normal form."""
    key = unicodedata.normalize("NFC", name)
    for other in known:
        if other != name and unicodedata.normalize("NFC", other) == key:
            return (
                f"it is {other!r} in another Unicode normal form ({normal_form(name)} here, "
                f"{normal_form(other)} in the class list): save both files in NFC"
            )
    return None
