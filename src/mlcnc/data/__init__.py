"""Data: readers, the VOC-LT / COCO-LT benchmarks, the embedded synthetic benchmark,
long-tail tools, class-aware sampling, transforms and the image Dataset.

The engine uses: ``DataConfig`` (the ``data:`` part of a config, defined in
``mlcnc.data.config``), ``build_splits``, ``build_dataset``, ``build_sampler`` and
``transforms.transforms_for``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Sampler

from mlcnc.data.config import DATASET_NAMES, DataConfig
from mlcnc.data.dataset import BadImageError, MultiLabelDataset, build_dataset, read_image
from mlcnc.data.readers import (
    DataError,
    MultiLabelSplit,
    read_csv_split,
    write_csv_split,
)
from mlcnc.data.samplers import (
    ClassAwareSampler,
    PairedSampler,
    ReversedSampler,
    ShuffleSampler,
    WeightedSampler,
)
from mlcnc.data.voc_coco import read_coco, read_voc

__all__ = [
    "DATASET_NAMES",
    "BadImageError",
    "ClassAwareSampler",
    "DataConfig",
    "DataError",
    "MultiLabelDataset",
    "MultiLabelSplit",
    "ShuffleSampler",
    "build_dataset",
    "build_sampler",
    "build_splits",
    "read_coco",
    "read_csv_split",
    "read_image",
    "read_voc",
    "write_csv_split",
]


def build_splits(cfg: DataConfig) -> dict[str, MultiLabelSplit]:
    """Read the dataset ``cfg`` names: keys ``train``, ``test`` and ``val`` where it has one.

    Every split shares the training split's class names.
    """
    if cfg.name == "synthetic":
        from mlcnc.data.synthetic import ensure_synthetic_benchmark

        root = Path(cfg.synthetic_root) if cfg.synthetic_root else None
        folder = ensure_synthetic_benchmark(root)
        return _read_csv_splits(folder / "train.csv", folder / "val.csv", folder / "test.csv")
    if cfg.name == "voc_lt":
        from mlcnc.data.benchmarks import build_voc_lt

        _require(cfg, "voc2012_root", "voc2007_root")
        return build_voc_lt(cfg.voc2012_root, cfg.voc2007_root, cfg.voc_lt_split_file)
    if cfg.name == "coco_lt":
        from mlcnc.data.benchmarks import build_coco_lt

        _require(cfg, "coco_root")
        return build_coco_lt(cfg.coco_root, cfg.coco_lt_split_file)
    _require(cfg, "train_csv", "test_csv")
    return _read_csv_splits(cfg.train_csv, cfg.val_csv, cfg.test_csv)


def build_sampler(
    kind: str,
    labels: np.ndarray,
    cfg: DataConfig,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Sampler[int]:
    """The training sampler: ``class_aware`` (spec B4) or ``random`` (uniform shuffling).
    Both take ``cfg.epoch_length`` samples per epoch (random: default one pass over the
    data), so a fixed epoch length gives every method the same steps; both are deterministic per (seed, epoch) via ``set_epoch`` and give
    each rank a disjoint share; do not let the launcher add its own distributed sampler."""
    if kind == "class_aware":
        return ClassAwareSampler(
            labels,
            num_samples_cls=cfg.num_samples_cls,
            epoch_length=cfg.epoch_length,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
    if kind == "weighted":  # LM-CLIP: by sample weight, with replacement
        return WeightedSampler(
            labels,
            power=cfg.sampler_power,
            epoch_length=cfg.epoch_length,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
    if kind == "random":
        return ShuffleSampler(
            len(labels), epoch_length=cfg.epoch_length, seed=seed, rank=rank, world_size=world_size
        )
    if kind in ("paired_reversed", "paired_class_aware"):
        # BBN / URS: a uniform draw paired with a re-balanced one, the same count per process.
        length = cfg.epoch_length or len(labels)
        uniform = ShuffleSampler(
            len(labels), epoch_length=length, seed=seed, rank=rank, world_size=world_size
        )
        second: Sampler[int]
        if kind == "paired_reversed":
            second = ReversedSampler(
                labels, epoch_length=length, seed=seed + 1, rank=rank, world_size=world_size
            )
        else:
            second = ClassAwareSampler(
                labels, 1, epoch_length=length, seed=seed + 1, rank=rank, world_size=world_size
            )
        return PairedSampler(uniform, second)
    raise ValueError(
        f"unknown sampler {kind!r}; choose random, class_aware, paired_reversed or "
        "paired_class_aware"
    )


def _read_csv_splits(
    train_csv: str | Path, val_csv: str | Path | None, test_csv: str | Path
) -> dict[str, MultiLabelSplit]:
    train = read_csv_split(train_csv)
    splits = {"train": train}
    if val_csv is not None:
        splits["val"] = read_csv_split(val_csv, train.class_names)
    splits["test"] = read_csv_split(test_csv, train.class_names)
    return splits


REQUIRED_KEYS = {
    "voc_lt": ("voc2012_root", "voc2007_root"),
    "coco_lt": ("coco_root",),
    "csv": ("train_csv", "test_csv"),
}
"""The ``data:`` keys each dataset needs (``check_required_keys``)."""


def check_required_keys(cfg: DataConfig) -> None:
    """Refuse (``ConfigError``, one line naming the keys) a dataset missing a key it needs;
    run before anything is read (``mlcnc train --dry-run`` too)."""
    _require(cfg, *REQUIRED_KEYS.get(cfg.name, ()))


def _require(cfg: DataConfig, *fields: str) -> None:
    from mlcnc.schema import ConfigError

    missing = [f for f in fields if getattr(cfg, f) is None]
    if missing:
        raise ConfigError(
            f"data.name={cfg.name!r} needs data.{', data.'.join(missing)}; set "
            + " and ".join(f"data.{f}=..." for f in missing)
        )
