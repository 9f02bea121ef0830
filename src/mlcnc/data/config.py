"""The ``data:`` section of a config (``DataConfig``) and the names it allows, beside the
data code that reads it (``mlcnc.config`` assembles the sections into a ``Config``)."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, Strict

from mlcnc.schema import Bool, NonNegativeInt, PositiveFloat, PositiveInt, Str, section

MIN_IMAGE_SIZE = 16
"""Smallest ``data.image_size``: below it the resize and the backbones' strided stages
have no pixels left to work on (``data.image_size=1`` failed inside PyTorch)."""

__all__ = [
    "DATASET_NAMES",
    "EVAL_TRANSFORMS",
    "TRAIN_TRANSFORMS",
    "DataConfig",
    "DatasetName",
    "EvalTransformName",
    "TrainTransformName",
]

TrainTransformName = Literal[
    "crop_flip_jitter", "multiscale_crop_flip", "cutout_randaugment", "resize_square_flip"
]
EvalTransformName = Literal["resize_center_crop", "resize_square"]
TRAIN_TRANSFORMS: tuple[str, ...] = get_args(TrainTransformName)
EVAL_TRANSFORMS: tuple[str, ...] = get_args(EvalTransformName)

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
    train_transform:  ``resize_square_flip``: resize to a square + flip (LMPT, LM-CLIP);
                      ``crop_flip_jitter`` (random resized crop, flip, colour jitter: the
                      recipes' default), ``multiscale_crop_flip`` (ML-GCN's multi-scale
                      crop at 13 fixed places, flip) or ``cutout_randaugment`` (ASL's: resize
                      to a square, cutout, RandAugment).
    eval_transform:   ``resize_center_crop`` (short side to image_size * 256 / 224, center
                      crop: the default) or ``resize_square`` (resize to image_size x
                      image_size, nothing cropped: ML-GCN's and ASL's evaluation).
    normalize:        normalise with the recipe's mean / std (default); false keeps pixels
                      in [0, 1], as ASL trains and evaluates; ``clip`` uses CLIP's statistics.
    See ``mlcnc.data.transforms`` for each step.
    num_workers:      DataLoader worker processes.
    num_samples_cls:  images per class draw of the class-aware sampler (spec: 1).
    sampler_power:    power s of the ``weighted`` sampler (LM-CLIP): image i is drawn with
                      probability proportional to (sum_{c in y_i} N / n_c)^s.
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
    image_size: Annotated[int, Strict(), Field(ge=MIN_IMAGE_SIZE)] = 224
    eval_flip: Bool = False
    augment: Bool = True
    train_transform: TrainTransformName = "crop_flip_jitter"
    eval_transform: EvalTransformName = "resize_center_crop"
    normalize: Bool | Literal["clip"] = True
    num_workers: NonNegativeInt = 4
    num_samples_cls: PositiveInt = 1
    sampler_power: PositiveFloat = 1.0
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
