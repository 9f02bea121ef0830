"""The data a run uses, checked before training: every image of every split, then the
training split's shape.

``checked_splits`` runs once per process (every rank computes the same answer from the same
files, so no broadcast is needed). Without ``data.skip_bad_images`` any problem stops the
run, all of them listed at once with file and line; with it the bad rows are dropped from
their split up front and written to ``dropped_images.csv`` in the run folder, so no row is
ever scored twice or left out silently.
"""

from __future__ import annotations

from collections.abc import Mapping

from mlcnc.data import DataConfig, MultiLabelSplit
from mlcnc.data.check import (
    BadImagesError,
    ImageProblem,
    check_splits,
    check_trainable,
    drop_bad_rows_from_splits,
)

DROPPED_FILE = "dropped_images.csv"


def checked_splits(
    cfg: DataConfig,
    splits: Mapping[str, MultiLabelSplit],
    *,
    progress: bool | None = False,
    workers: int | None = None,
) -> tuple[dict[str, MultiLabelSplit], list[ImageProblem]]:
    """``splits`` after the image checks of ``cfg``, and the rows dropped (see the module
    docstring; the caller writes them to ``DROPPED_FILE``)."""
    if cfg.skip_bad_images:
        return drop_bad_rows_from_splits(splits, cfg.max_image_pixels, workers, progress=progress)
    if cfg.check_images:
        problems = check_splits(splits, cfg.max_image_pixels, workers, progress=progress)
        if problems:
            raise BadImagesError(
                problems,
                "fix or remove these rows, or set data.skip_bad_images=true to leave them out",
            )
    return dict(splits), []


def check_training_split(split: MultiLabelSplit) -> None:
    """One line (DataError) when no image of ``split`` has a label (nothing to learn); the
    engine refuses too few images and too few classes with method-specific messages."""
    check_trainable(split, min_images=1, min_classes=1)
