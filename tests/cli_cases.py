"""What the tests of docs/bad_input.md's tables share: the table reader, the case registry,
the in-process ``mlcnc`` runner and the tiny training command.

Each section of the doc is kept true by one test file (tests/cli/test_bad_input.py,
test_bad_input_runs.py, test_bad_input_traps.py): it reads its sections' rows with
``doc_rows``, registers one function per case in a ``Cases`` and runs each through
``Runner``: the output must contain the row's message and the result must be the row's.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import REPO_ROOT, TINY_METHOD, tiny_data_overrides
from mlcnc.cli import main

DOC = REPO_ROOT / "docs" / "bad_input.md"
ROW = re.compile(r"^\| `([a-z0-9-]+)` \|(.*)\|(.*)\| `(.*)` \| (.*) \|$")


def doc_rows(*sections: str) -> dict[str, tuple[str, str]]:
    """case -> (message, result) from the tables of the ``## `` sections named (a
    result's backticks dropped); a case listed twice is refused."""
    rows, inside = {}, False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line.strip() in sections
        found = ROW.match(line) if inside else None
        if found:
            case, _, _, message, result = found.groups()
            assert case not in rows, f"case {case} twice in {DOC.name}"
            rows[case] = (message, result.strip().strip("`"))
    return rows


class Cases(dict[str, Callable[..., Any]]):
    """case name -> the function that runs it; ``@cases.case(name)`` registers one."""

    def case(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            assert name not in self, f"case {name} registered twice"
            self[name] = function
            return function

        return register


class Outcome(tuple):
    """("exit N", stdout + stderr), with ``out`` and ``err`` apart."""

    out: str = ""
    err: str = ""


class Runner:
    """Runs ``mlcnc`` in-process; returns an ``Outcome`` and keeps ``out`` and ``err``."""

    def __init__(self, capsys: pytest.CaptureFixture) -> None:
        self.capsys = capsys
        self.out = self.err = ""

    def __call__(self, *argv: str | Path) -> Outcome:
        self.capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # as the interpreter answers it: a text goes to stderr
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
            code = 1 if isinstance(exit_.code, str) else int(exit_.code or 0)
        captured = self.capsys.readouterr()
        self.out, self.err = captured.out, captured.err
        outcome = Outcome((f"exit {code}", captured.out + captured.err))
        outcome.out, outcome.err = captured.out, captured.err
        return outcome


def tiny_args(data: Path, out: Path, *extra: str, val: bool = True) -> list[str]:
    """``mlcnc train`` of the tiny method on the tiny CSV dataset (2 epochs, CPU)."""
    return [
        "train",
        "--config",
        "csv",
        "--output",
        str(out),
        *tiny_data_overrides(data, image_size=24, val=val),
        f"method.name={TINY_METHOD}",
        "method.pretrained=false",
        "optim.epochs=2",
        "optim.batch_size=5",
        "train.accelerator=cpu",
        "train.ema_decay=0.9",
        "train.progress=false",
        "train.plots=false",
        "train.num_threads=1",
        *extra,
    ]
