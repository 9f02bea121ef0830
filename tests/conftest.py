"""Shared test fixtures: the offline benchmark copies and a tiny CSV image dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = REPO_ROOT.parent / "shared" / "benchmarks"

TINY_CLASSES = ("circle", "square", "triangle", "star")


@pytest.fixture(scope="session")
def shared_benchmarks() -> Path:
    """``<repo>/../shared/benchmarks`` (VOC-LT / COCO-LT split files and reference stats);
    the test is skipped when that folder is absent."""
    if not (SHARED_BENCHMARKS / "voc_lt").is_dir() or not (SHARED_BENCHMARKS / "coco_lt").is_dir():
        pytest.skip(f"benchmark copies not found at {SHARED_BENCHMARKS}")
    return SHARED_BENCHMARKS


def write_tiny_csv_dataset(folder: Path, image_size: int = 32, seed: int = 0) -> Path:
    """A 4-class CSV dataset: train (25 images, long-tailed: 17/8/4/2 positives plus
    co-occurrence and one empty image), val (8), test (8); PNG images; classes.txt."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    (folder / "classes.txt").write_text("".join(f"{c}\n" for c in TINY_CLASSES))
    train = [[0]] * 10 + [[0, 1]] * 4 + [[1]] * 4 + [[0, 2]] * 2 + [[2]] * 2 + [[3], [0, 3]]
    train = [*train, []]  # one all-negative image
    layouts = {
        "train": train,
        "val": [[0], [1], [2], [3], [0, 1], [0, 2], [1, 3], []],
        "test": [[0], [1], [2], [3], [0, 3], [1, 2], [0, 1, 2], [3]],
    }
    for split, rows in layouts.items():
        lines = ["image,labels"]
        for i, classes in enumerate(rows):
            name = f"images/{split}_{i:03d}.png"
            pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name)
            lines.append(f"{name},{';'.join(TINY_CLASSES[c] for c in classes)}")
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def tiny_csv_dataset(tmp_path: Path) -> Path:
    """Folder holding train.csv, val.csv, test.csv, classes.txt and images/ (see
    ``write_tiny_csv_dataset``); the layout ``ensure_synthetic_benchmark`` returns."""
    return write_tiny_csv_dataset(tmp_path / "tiny")
