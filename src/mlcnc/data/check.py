"""Check every image of a dataset before a run, and drop bad rows up front.

``check_split`` looks at each image of a split in parallel (threads: Pillow releases the GIL
while it reads and decodes) with a progress bar and returns *all* problems at once, each
with the file and line that lists the image: missing file, broken symbolic link, folder,
empty file, not an image, unsupported format, above the pixel limit, corrupt data
(``verify``: PNG checksums; ``decode=True`` decodes every image fully, which also finds
truncated JPEG and GIF data; an image whose pixels do not fit in memory is "too large for
memory", not corrupt), and two rows naming the same file (through a link or a
hard link). ``check_splits`` does every split and also refuses evaluation images that are
training images too.

``drop_bad_rows`` is what ``data.skip_bad_images`` asks for: the split without its bad
rows, and the dropped rows (file, line, path, reason) for the run folder, decided before
the run so that no row is scored twice or left out without a record.
``check_trainable`` refuses a training split a method cannot learn from.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mlcnc.data.dataset import (
    DEFAULT_MAX_IMAGE_PIXELS,
    BadImageError,
    probe_image,
    read_image,
)
from mlcnc.data.readers import DataError, MultiLabelSplit, file_problem, show_path
from mlcnc.io import open_atomic

EVALUATION_SPLITS = ("val", "test")
_BLOCK = 64  # rows per task: few futures for a million rows, an even spread for ten


@dataclass(frozen=True)
class ImageProblem:
    """One bad row: where it is listed (``source`` and its ``line``: a line number or, for
    COCO, an image id, as ``line_kind`` says; None without one), the image path, why, the
    row's index in its split (0-based) and the split's name (``train``, ``test``..., or
    "" for a lone split)."""

    source: str
    line: int | None
    path: Path
    reason: str
    line_kind: str = "line"
    row: int = 0
    split: str = ""

    @property
    def location(self) -> str:
        """``train.csv:12`` (editor-clickable), ``instances.json (image id 7)``, or
        ``VOC2012 (row 3)`` without line numbers."""
        if self.line is None:
            return f"{show_path(self.source)} (row {self.row + 1})"
        if self.line_kind == "line":
            return f"{show_path(self.source)}:{self.line}"
        return f"{show_path(self.source)} ({self.line_kind} {self.line})"

    def __str__(self) -> str:
        return f"{self.location}: {show_path(self.path)}: {self.reason}"


class BadImagesError(DataError):
    """Bad images in a dataset; ``problems`` lists them all, the message is one line."""

    def __init__(self, problems: Sequence[ImageProblem], hint: str = "") -> None:
        self.problems = list(problems)
        sources = sorted({p.source for p in self.problems})
        message = (
            f"{len(self.problems)} bad image(s) in {', '.join(show_path(s) for s in sources)}; "
            f"first: {self.problems[0]}"
        )
        super().__init__(f"{message}; {hint}" if hint else message)


def image_problem(
    path: str | Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, decode: bool = False
) -> str | None:
    """Why ``path`` is not a readable image (None if it is): ``probe_image`` (header,
    format, size, Pillow's verify), and with ``decode`` a full ``read_image``."""
    try:
        probe_image(path, max_pixels)
        if decode:
            read_image(path, max_pixels)
    except BadImageError as err:
        return err.reason
    return None


def check_split(
    split: MultiLabelSplit,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    workers: int | None = None,
    *,
    decode: bool = False,
    name: str = "",
    progress: bool | None = None,
) -> list[ImageProblem]:
    """Every problem of every image of ``split``, in row order (see the module docstring).

    workers: threads (None: up to 8, at most the CPUs). progress: show a tqdm bar (None:
    only on a terminal). name: the split's name, recorded in each problem.
    """
    problems, _ = _check_rows(split, max_pixels, workers, decode, name, progress)
    return problems


def check_splits(
    splits: Mapping[str, MultiLabelSplit],
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    workers: int | None = None,
    *,
    decode: bool = False,
    progress: bool | None = None,
) -> list[ImageProblem]:
    """``check_split`` of every split, plus every ``val`` / ``test`` row whose image is
    also a ``train`` image (an evaluation that scores training images would lie; a val
    split that shares images with the test split is allowed)."""
    problems: list[ImageProblem] = []
    files: dict[str, dict[tuple[int, int], int]] = {}
    for name, split in splits.items():
        found, files[name] = _check_rows(split, max_pixels, workers, decode, name, progress)
        problems += found
    if "train" in splits:
        problems += _leaks(splits, files)
    return problems


def drop_bad_rows(
    split: MultiLabelSplit,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    workers: int | None = None,
    *,
    decode: bool = True,
    name: str = "",
    progress: bool | None = None,
) -> tuple[MultiLabelSplit, list[ImageProblem]]:
    """``split`` without the rows ``check_split`` finds bad (decoding every image by
    default, so that none can fail later), and the dropped rows. A row listing the same
    file as an earlier row is dropped, the earlier one kept. ``DataError`` if no row is
    left."""
    problems = check_split(split, max_pixels, workers, decode=decode, name=name, progress=progress)
    if not problems:
        return split, []
    bad = {p.row for p in problems}
    keep = [row for row in range(len(split)) if row not in bad]
    if not keep:
        raise BadImagesError(problems, "no image of the split is readable")
    return split.subset(keep), problems


def drop_bad_rows_from_splits(
    splits: Mapping[str, MultiLabelSplit],
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    workers: int | None = None,
    *,
    decode: bool = True,
    progress: bool | None = None,
) -> tuple[dict[str, MultiLabelSplit], list[ImageProblem]]:
    """``drop_bad_rows`` on every split; an evaluation image that is also a training image
    is not dropped but refused (``BadImagesError``): fix the split files."""
    kept: dict[str, MultiLabelSplit] = {}
    dropped: list[ImageProblem] = []
    for name, split in splits.items():
        kept[name], gone = drop_bad_rows(
            split, max_pixels, workers, decode=decode, name=name, progress=progress
        )
        dropped += gone
    if "train" in kept:
        files = {name: _file_ids(split) for name, split in kept.items()}
        leaks = _leaks(kept, files)
        if leaks:
            raise BadImagesError(leaks, "remove the shared images from one of the splits")
    return kept, dropped


def write_problems(problems: Iterable[ImageProblem], path: str | Path) -> Path:
    """Write problems (e.g. the rows ``drop_bad_rows`` dropped) as a CSV with columns
    split, source, line, image, reason; paths written as their bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_atomic(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(("split", "source", "line", "image", "reason"))
        for p in problems:
            if p.line is None:
                line = f"row {p.row + 1}"
            else:
                line = str(p.line) if p.line_kind == "line" else f"{p.line_kind} {p.line}"
            writer.writerow((p.split, p.source, line, str(p.path), p.reason))
    return path


def summarize(
    problems: Sequence[ImageProblem],
    splits: Mapping[str, MultiLabelSplit],
    decode: bool | None = None,
) -> str:
    """One line: how many rows were checked (per split), how far (``decode``: True every
    image decoded, False headers only, None unsaid), how many rows are bad and how many
    problems of each kind."""
    total = sum(len(s) for s in splits.values())
    per_split = ", ".join(f"{name}: {len(split)}" for name, split in splits.items())
    head = f"checked {total} row{'' if total == 1 else 's'} in {len(splits)} split(s) ({per_split})"
    if decode is True:
        head += ", every image decoded"
    elif decode is False:
        head += ", image headers only (--decode also decodes every image)"
    if not problems:
        return f"{head}: no problems"
    kinds: dict[str, int] = {}
    for p in problems:
        kind = _kind(p.reason)
        kinds[kind] = kinds.get(kind, 0) + 1
    bad_rows = len({(p.split, p.source, p.row) for p in problems})
    listed = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
    return f"{head}: {bad_rows} bad row(s) of {total}, {len(problems)} problem(s) ({listed})"


def check_trainable(
    split: MultiLabelSplit,
    *,
    min_images: int = 2,
    min_classes: int = 2,
    require_every_class: bool = False,
) -> None:
    """``DataError`` (one line naming the split's file) if a method cannot learn from
    ``split``: fewer than ``min_images`` images (a training batch of one breaks BatchNorm),
    fewer than ``min_classes`` classes (the simplex ETF needs C >= 2), no positive label
    at all, or (``require_every_class``: losses that divide by n_c) a class without a
    positive image."""
    source = show_path(split.source)
    if len(split) < min_images:
        raise DataError(
            f"{source}: {len(split)} training image(s); training needs at least {min_images}"
        )
    if split.num_classes < min_classes:
        raise DataError(
            f"{source}: {split.num_classes} class(es) ({', '.join(split.class_names)}); "
            f"training needs at least {min_classes}"
        )
    freq = split.class_freq
    if not freq.any():
        raise DataError(f"{source}: no image has any label; nothing to learn")
    if require_every_class and not freq.all():
        empty = [split.class_names[c] for c in np.flatnonzero(freq == 0)]
        raise DataError(
            f"{source}: {len(empty)} class(es) without a positive training image "
            f"({', '.join(empty[:10])}{'...' if len(empty) > 10 else ''}); add images or "
            "remove the class from classes.txt"
        )


# ------------------------------------------------------------------------ internals


def _check_rows(
    split: MultiLabelSplit,
    max_pixels: int | None,
    workers: int | None,
    decode: bool,
    name: str,
    progress: bool | None,
) -> tuple[list[ImageProblem], dict[tuple[int, int], int]]:
    """Problems in row order, and the (device, inode) of each good file -> its first row."""
    paths = split.image_paths
    workers = workers or min(8, os.cpu_count() or 1)
    blocks = [
        range(start, min(start + _BLOCK, len(paths))) for start in range(0, len(paths), _BLOCK)
    ]

    def check_block(rows: range) -> list[tuple[str | None, tuple[int, int] | None]]:
        results = []
        for row in rows:
            reason, info = file_problem(paths[row])
            if reason is None:
                reason = image_problem(paths[row], max_pixels, decode)
            key = (info.st_dev, info.st_ino) if info is not None else None
            results.append((reason, key))
        return results

    results: list[tuple[str | None, tuple[int, int] | None]] = []
    label = f"checking {name or show_path(split.source)}"
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(paths), desc=label, unit="img", disable=_no_bar(progress)) as bar,
    ):
        for block in pool.map(check_block, blocks):
            results += block
            bar.update(len(block))

    problems, first_row = [], {}
    for row, (reason, key) in enumerate(results):
        if reason is None and key is not None:
            if key in first_row:
                reason = f"the same image file as {_where(split, first_row[key])}; list it once"
            else:
                first_row[key] = row
        if reason is not None:
            problems.append(_problem(split, row, reason, name))
    return problems, first_row


def _file_ids(split: MultiLabelSplit) -> dict[tuple[int, int], int]:
    ids = {}
    for row, path in enumerate(split.image_paths):
        _, info = file_problem(path)
        if info is not None:
            ids.setdefault((info.st_dev, info.st_ino), row)
    return ids


def _leaks(
    splits: Mapping[str, MultiLabelSplit], files: Mapping[str, Mapping[tuple[int, int], int]]
) -> list[ImageProblem]:
    train = splits["train"]
    problems = []
    for name in EVALUATION_SPLITS:
        if name not in splits:
            continue
        for key, row in sorted(files[name].items(), key=lambda kv: kv[1]):
            if key in files["train"]:
                reason = (
                    f"also a training image ({_where(train, files['train'][key])}); "
                    f"the {name} split must not score images the model was trained on"
                )
                problems.append(_problem(splits[name], row, reason, name))
    return problems


def _problem(split: MultiLabelSplit, row: int, reason: str, name: str) -> ImageProblem:
    line = None if split.lines is None else split.lines[row]
    return ImageProblem(
        split.source, line, split.image_paths[row], reason, split.line_kind, row, name
    )


def _where(split: MultiLabelSplit, row: int) -> str:
    return _problem(split, row, "", "").location


def _kind(reason: str) -> str:
    for marker, kind in (
        ("not found", "missing"),
        ("broken symbolic link", "broken link"),
        ("folder", "folder"),
        ("empty file", "empty"),
        ("not an image", "not an image"),
        ("unsupported", "unsupported"),
        ("above the limit", "too large"),
        ("too large to decode in memory", "too large for memory"),
        ("aspect ratio", "extreme aspect ratio"),
        ("same image file", "duplicate"),
        ("also a training image", "in train and evaluation"),
    ):
        if marker in reason:
            return kind
    return "corrupt"


def _no_bar(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
