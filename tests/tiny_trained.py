"""A tiny MLC-NC checkpoint trained through the engine's public API, for the predict /
inspect / export tests: ResNet-18 from scratch with a small head, two steps on the shared
tiny CSV dataset at 64 px (a 2 x 2 token grid, so attention maps have structure).

Training takes a while on a busy CPU, so the run is made once per test session and reused
by every test module (it lives under pytest's session temporary folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import TINY_CLASSES, write_tiny_csv_dataset

IMAGE_SIZE = 64


@dataclass(frozen=True)
class TinyRun:
    data: Path  # train.csv, val.csv, test.csv, classes.txt, images/
    run: Path  # the run folder
    checkpoint: Path  # run/checkpoints/last.ckpt
    class_names: tuple[str, ...] = TINY_CLASSES


def tiny_trained_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    from mlcnc.config import load_config
    from mlcnc.engine import train

    root = tmp_path_factory.getbasetemp() / "tiny_trained_mlcnc"
    result = TinyRun(root / "data", root / "run", root / "run" / "checkpoints" / "last.ckpt")
    if result.checkpoint.is_file():
        return result
    write_tiny_csv_dataset(result.data, image_size=IMAGE_SIZE)
    cfg = load_config(
        None,
        [
            "data.name=csv",
            f"data.train_csv={result.data / 'train.csv'}",
            f"data.val_csv={result.data / 'val.csv'}",
            f"data.test_csv={result.data / 'test.csv'}",
            f"data.image_size={IMAGE_SIZE}",
            "data.num_workers=0",
            "data.head_threshold=8",
            "data.tail_threshold=3",
            "method.name=mlcnc",
            "method.backbone=resnet18",
            "method.pretrained=false",
            "method.model={embed_dim: 32, num_heads: 2, proj_dim: 4}",
            "optim.epochs=1",
            "optim.batch_size=8",
            "optim.lr=1e-3",
            f"train.output={result.run}",
            "train.limit_train_batches=2",
            "train.ema_decay=0.5",
            "train.precision=32-true",
            "train.accelerator=cpu",
            "train.progress=false",
            "train.plots=false",
        ],
    )
    train(cfg, config_name="tiny")
    assert result.checkpoint.is_file()
    return result
