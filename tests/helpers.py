"""What many tests share: the tiny CSV dataset, the tiny registered method and its config.

``import helpers`` works from every test folder (``pythonpath`` in pyproject.toml) and from
the scripts that tests start in subprocesses (they put ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from mlcnc.config import OptimConfig, load_config
from mlcnc.engine.optim import build_optimizer, build_scheduler
from mlcnc.losses.base import AllReduce, Criterion
from mlcnc.methods import METHODS, BuildRequest, Method, MethodRecord, register_method
from mlcnc.models.output import ModelOutput

TESTS = Path(__file__).resolve().parent
REPO_ROOT = TESTS.parent
TINY_CLASSES = ("circle", "square", "triangle", "star")


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


TINY_METHOD = "engine_test_tiny"


class TinyModel(nn.Module):
    """images (B, 3, H, W) -> logits (B, C) and unit projections (B, C, 2)."""

    def __init__(self, num_classes: int, norm: bool = True, dropout: float = 0.2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8) if norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(8, num_classes)
        self.proj = nn.Linear(8, num_classes * 2)

    def forward(self, images: Tensor, return_attention: bool = False) -> ModelOutput:
        pooled = self.drop(F.relu(self.norm(self.conv(images))).mean(dim=(2, 3)))
        projections = F.normalize(self.proj(pooled).view(len(images), self.num_classes, 2), dim=-1)
        return ModelOutput(logits=self.fc(pooled), projections=projections)


class CountingBCE(Criterion):
    """BCE; counts positives seen in training (buffer, summed over ranks at epoch end).

    nan_at_step: return a NaN total at this (1-based) training call, to test the NaN stop.
    """

    def __init__(self, num_classes: int, nan_at_step: int | None = None) -> None:
        super().__init__()
        self.nan_at_step = nan_at_step
        self.calls = 0
        self.register_buffer("epoch_counts", torch.zeros(num_classes))
        self.register_buffer("seen_counts", torch.zeros(num_classes))

    def forward(self, output: ModelOutput, targets: Tensor) -> dict[str, Tensor]:
        bce = F.binary_cross_entropy_with_logits(output.logits.float(), targets)
        if self.training:
            self.calls += 1
            self.epoch_counts += targets.sum(dim=0)
            if self.calls == self.nan_at_step:
                bce = bce * float("nan")
        return {"total": bce, "bce": bce, "half": 0.5 * bce.detach()}

    def end_epoch(self, all_reduce: AllReduce | None = None) -> None:
        counts = self.epoch_counts if all_reduce is None else all_reduce(self.epoch_counts.clone())
        self.seen_counts += counts
        self.epoch_counts.zero_()


def _tiny(request: BuildRequest) -> Method:
    model = TinyModel(request.num_classes, **request.model)
    return Method(model, CountingBCE(request.num_classes, **request.loss), "random")


@contextmanager
def registered(record: MethodRecord) -> Iterator[MethodRecord]:
    """``record`` registered for the duration of the block (refused if the name is taken)."""
    register_method(record)
    try:
        yield record
    finally:
        METHODS.unregister(record.name)


TINY_RECORD = MethodRecord(TINY_METHOD, "tiny", _tiny, "random")


def register_tiny_method() -> None:
    """Register the tiny method for good (subprocess scripts; idempotent)."""
    if TINY_METHOD not in METHODS:
        register_method(TINY_RECORD)


def tiny_data_overrides(data: Path, image_size: int = 32, val: bool = True) -> list[str]:
    """The ``data:`` overrides of the tiny CSV dataset in ``data`` (train, val unless not
    ``val``, test; no workers; head / tail thresholds that give the 4 classes all three
    groups)."""
    return [
        f"data.train_csv={data / 'train.csv'}",
        *([f"data.val_csv={data / 'val.csv'}"] if val else []),
        f"data.test_csv={data / 'test.csv'}",
        f"data.image_size={image_size}",
        "data.num_workers=0",
        "data.head_threshold=10",
        "data.tail_threshold=4",
    ]


def tiny_config(data: Path, out: Path, *overrides: str):
    """A csv config for the tiny method: 32 px, batch 5, 3 epochs, CPU, no workers."""
    return load_config(
        "csv",
        [
            *tiny_data_overrides(data, image_size=24),
            f"method.name={TINY_METHOD}",
            "method.pretrained=false",
            "optim.epochs=3",
            "optim.batch_size=5",
            "optim.lr=0.01",
            "train.accelerator=cpu",
            "train.ema_decay=0.9",
            "train.progress=false",
            "train.log_every=2",
            # One thread: "auto" counts idle cores, which differ between two runs on a busy
            # machine, and bit-exact resume tests compare floating-point sums.
            "train.num_threads=1",
            f"train.output={out}",
            *overrides,
        ],
    )


def onecycle_lrs(epochs: int, steps_per_epoch: int) -> list[float]:
    """The lr after each optimizer step of a fresh OneCycle (index 0: before any step)."""
    cfg = OptimConfig(epochs=epochs, lr=0.01)
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    optimizer.step()
    lrs = [scheduler.get_last_lr()[0]]
    for _ in range(epochs * steps_per_epoch):
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    return lrs
