"""Options renamed so that each name means one thing (``--data`` once meant a split for
``inspect``, data-config overrides for ``evaluate``, a config for ``benchmark`` and a named
benchmark for ``data stats``): the old spelling still works, hidden from ``--help``, and
says its new name in one line on stderr."""

from __future__ import annotations

import argparse
import sys
from typing import Any


class OldSpelling(argparse.Action):
    """The old spelling of an option: stores into the new option's ``dest`` and prints one
    note naming the new spelling."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any):
        self.new = new
        kwargs.setdefault("default", argparse.SUPPRESS)  # the new option's default stays
        kwargs["help"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(
            f"{parser.prog}: note: {option_string} is now spelled {self.new}; the old "
            "spelling still works for now",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_old_spelling(parser: Any, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """Accept ``old`` for the option ``new`` (stored in ``dest``), hidden from help."""
    parser.add_argument(old, dest=dest, action=OldSpelling, new=new, **kwargs)
