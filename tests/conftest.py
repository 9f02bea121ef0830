"""Shared test fixtures: the offline benchmark copies and a tiny CSV image dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import REPO_ROOT, TINY_RECORD, registered, write_tiny_csv_dataset
from mlcnc.methods import METHODS

SHARED_BENCHMARKS = REPO_ROOT.parent / "shared" / "benchmarks"


@pytest.fixture(scope="session")
def shared_benchmarks() -> Path:
    """``<repo>/../shared/benchmarks`` (VOC-LT / COCO-LT split files and reference stats);
    the test is skipped when that folder is absent."""
    if not (SHARED_BENCHMARKS / "voc_lt").is_dir() or not (SHARED_BENCHMARKS / "coco_lt").is_dir():
        pytest.skip(f"benchmark copies not found at {SHARED_BENCHMARKS}")
    return SHARED_BENCHMARKS


@pytest.fixture
def tiny_csv_dataset(tmp_path: Path) -> Path:
    """Folder holding train.csv, val.csv, test.csv, classes.txt and images/ (see
    ``write_tiny_csv_dataset``); the layout ``ensure_synthetic_benchmark`` returns."""
    return write_tiny_csv_dataset(tmp_path / "tiny")


@pytest.fixture(scope="session")
def tiny_method():
    """The tiny engine-test method (``helpers.TINY_RECORD``), registered for the session."""
    if TINY_RECORD.name in METHODS:  # a test registered it for good (register_tiny_method)
        yield METHODS.get(TINY_RECORD.name)
        return
    with registered(TINY_RECORD) as record:
        yield record


FORK_FIRST = "losses/test_distributed.py"
"""Its workers are forked with prepared models; a fork after this session has trained in
process (the engine tests) inherits autograd's threads and fails. It runs first."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(f"tests/{FORK_FIRST}"))
