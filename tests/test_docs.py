"""The docs a user reads: no unresolved merge conflicts, no reference to files they lack."""

from __future__ import annotations

import re

import pytest

from helpers import REPO_ROOT

DOCS = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md")])
CONFLICT = re.compile(r"^(<{7}|={7}|>{7})( |$)", re.MULTILINE)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_merge_conflict_markers(doc) -> None:
    found = [m.group(0) for m in CONFLICT.finditer(doc.read_text(encoding="utf-8"))]
    assert not found, f"{doc.name} holds merge-conflict markers: {found}"
