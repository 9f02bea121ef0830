"""Data: readers, the VOC-LT / COCO-LT benchmarks, the embedded synthetic benchmark,
long-tail tools, class-aware sampling, transforms and the image Dataset.

The engine uses: ``DataConfig`` (the ``data:`` part of a config), ``build_splits``,
``build_dataset``, ``build_sampler`` and ``transforms.transforms_for``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from torch.utils.data import Sampler

from mlcnc.data.dataset import BadImageError, MultiLabelDataset, build_dataset, read_image
from mlcnc.data.readers import (
    DataError,
    MultiLabelSplit,
    read_coco,
    read_csv_split,
    read_voc,
    write_csv_split,
)
from mlcnc.data.samplers import (
    ClassAwareSampler,
    PairedSampler,
    ReversedSampler,
    ShuffleSampler,
)
from mlcnc.data.transforms import EvalTransformName, TrainTransformName
from mlcnc.schema import Bool, NonNegativeInt, PositiveInt, Str, section

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

DatasetName = Literal["synthetic", "voc_lt", "coco_lt", "csv"]
DATASET_NAMES: tuple[str, ...] = ("synthetic", "voc_lt", "coco_lt", "csv")


@section(key="data")
class DataConfig:
    """The ``data:`` part of a config.

    name:             ``synthetic`` (the embedded benchmark, the default), ``voc_lt``,
                      ``coco_lt`` or ``csv`` (your own data).
    synthetic_root:   folder of the synthetic benchmark (None = its default cache folder).
    voc2012_root:     VOCdevkit/VOC2012 folder (voc_lt training images).
    voc2007_root:     VOCdevkit/VOC2007 folder holding the test set (voc_lt test images).
    coco_root:        folder with annotations/, train2017/, val2017/ (coco_lt).
    voc_lt_split_file, coco_lt_split_file: local copies of the benchmark split files
                      (None = download once and cache under $MLCNC_HOME).
    train_csv, val_csv, test_csv: the csv dataset's splits (val optional).
    image_size:       training crop and evaluation size in pixels.
    eval_flip:        flip at random at evaluation time, as the released MLC-NC code does
                      (off: deterministic evaluation).
    augment:          training augmentation (``train_transform``); false trains on the
                      evaluation transform (exactness checks, debugging).
    train_transform:  ``crop_flip_jitter`` (random resized crop, flip, colour jitter: the
                      recipes' default), ``multiscale_crop_flip`` (ML-GCN's multi-scale
                      crop at 13 fixed places, flip) or ``cutout_randaugment`` (ASL's: resize
                      to a square, cutout, RandAugment).
    eval_transform:   ``resize_center_crop`` (short side to image_size * 256 / 224, center
                      crop: the default) or ``resize_square`` (resize to image_size x
                      image_size, nothing cropped: ML-GCN's and ASL's evaluation).
    normalize:        normalise with the recipe's mean / std (default); false keeps pixels
                      in [0, 1], as ASL trains and evaluates.
    See ``mlcnc.data.transforms`` for each step.
    num_workers:      DataLoader worker processes.
    num_samples_cls:  images per class draw of the class-aware sampler (spec: 1).
    epoch_length:     samples per epoch of either sampler (None: class-aware max_c n_c x C,
                      random one pass over the training images).
    skip_bad_images:  drop unreadable images from their split before training (listed in the
                      run folder's dropped_images.csv) instead of stopping.
    check_images:     check every image of every split before training (exists, header
                      decodes, supported format, under the pixel limit); all problems at once.
    max_image_pixels: refuse images with more pixels than this, before decoding (None: no
                      limit); PIL's default limit.
    head_threshold, tail_threshold: class groups from training counts n_c:
                      head n_c >= head_threshold, tail n_c < tail_threshold, medium between.
    """

    name: DatasetName = "synthetic"
    synthetic_root: Str | None = None
    voc2012_root: Str | None = None
    voc2007_root: Str | None = None
    coco_root: Str | None = None
    voc_lt_split_file: Str | None = None
    coco_lt_split_file: Str | None = None
    train_csv: Str | None = None
    val_csv: Str | None = None
    test_csv: Str | None = None
    image_size: PositiveInt = 224
    eval_flip: Bool = False
    augment: Bool = True
    train_transform: TrainTransformName = "crop_flip_jitter"
    eval_transform: EvalTransformName = "resize_center_crop"
    normalize: Bool = True
    num_workers: NonNegativeInt = 4
    num_samples_cls: PositiveInt = 1
    epoch_length: PositiveInt | None = None
    skip_bad_images: Bool = False
    check_images: Bool = True
    max_image_pixels: PositiveInt | None = 89_478_485
    head_threshold: NonNegativeInt = 100
    tail_threshold: NonNegativeInt = 20

    def __post_init__(self) -> None:
        if self.tail_threshold > self.head_threshold:
            raise ValueError(
                f"tail_threshold ({self.tail_threshold}) must not exceed "
                f"head_threshold ({self.head_threshold})"
            )


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


def _require(cfg: DataConfig, *fields: str) -> None:
    missing = [f for f in fields if getattr(cfg, f) is None]
    if missing:
        raise ValueError(f"data.name={cfg.name!r} needs data.{', data.'.join(missing)}")
