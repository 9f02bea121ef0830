"""Image captions for LMPT's class-specific embedding loss (vlm-spec 1.5).

A caption file holds one line per training image: ``<image path> <caption>`` (the path has no
spaces; the caption is the rest of the line), the format of LMPT's
``data/voc/voc_lt_captions.txt`` and ``data/coco/coco_lt_captions.txt``. mlcnc ships no
caption file: point ``method.model.captions`` at one.

Alignment with the training split (``read_captions``):

- by path, when every training image has a caption line whose path is a trailing part of
  the image's path (``VOCdevkit/VOC2012/JPEGImages/2008_000023.jpg`` matches
  ``/data/voc/VOCdevkit/VOC2012/JPEGImages/2008_000023.jpg``); extra lines are ignored;
- else by line order, as LMPT reads them (line i is training image i), when no caption path
  matches a training image and the file has exactly one line per image (a warning says so);
- anything else (some images matched, others not; no path matching and a line count that
  is not the number of training images, e.g. another dataset's file; a line without a
  caption; two captions for one image; a folder) is a one-line ``CaptionError`` naming the
  file (and the line, or both counts).

Each caption is whitespace-normalised (``' '.join(text.split())``) and cut to its first
``chars`` characters (LMPT: 75), as ``lmpt/imagelist.py`` does.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path, PurePath

from mlcnc.data.readers import DataError


class CaptionError(DataError):
    """A caption file that cannot give one caption per training image (one line)."""


def parse_caption_lines(path: Path) -> list[tuple[int, str, str]]:
    """(line number, image path, caption) of every non-empty line of ``path``."""
    if path.is_dir():
        raise CaptionError(
            f"{path}: is a folder, not a caption file (method.model.captions: a file with one "
            "`<image path> <caption>` line per training image, e.g. LMPT's "
            "data/voc/voc_lt_captions.txt)"
        )
    if not path.is_file():
        raise CaptionError(
            f"caption file not found: {path} (method.model.captions: one `<image path> "
            "<caption>` line per training image, e.g. LMPT's data/voc/voc_lt_captions.txt)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CaptionError(f"{path}: cannot read the caption file ({error})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise CaptionError(
                f"{path}, line {number}: no caption after the image path {parts[0]!r} "
                "(expected `<image path> <caption>`)"
            )
        rows.append((number, parts[0], " ".join(parts[1:])))
    if not rows:
        raise CaptionError(f"{path}: the caption file is empty")
    return rows


def _suffix_key(path: str | PurePath) -> tuple[str, ...]:
    return tuple(PurePath(str(path).replace("\\", "/")).parts)


def _match_by_path(
    path: Path, rows: list[tuple[int, str, str]], image_paths: Sequence[str | PurePath]
) -> list[str] | None:
    """Captions in training order matched by path; None when no image matches any line."""
    by_name: dict[str, list[tuple[int, tuple[str, ...], str]]] = {}
    for number, image, caption in rows:
        key = _suffix_key(image)
        by_name.setdefault(key[-1], []).append((number, key, caption))
    captions: list[str | None] = []
    missing = None
    for index, image in enumerate(image_paths):
        parts = _suffix_key(image)
        found = [r for r in by_name.get(parts[-1], []) if parts[-len(r[1]) :] == r[1]]
        if len(found) > 1 and len({r[2] for r in found}) > 1:
            lines = ", ".join(str(r[0]) for r in found)
            raise CaptionError(f"{path}, lines {lines}: two captions for training image {image}")
        captions.append(found[0][2] if found else None)
        if not found and missing is None:
            missing = (index, image)
    if all(c is None for c in captions):
        return None
    if missing is not None:
        index, image = missing
        raise CaptionError(
            f"{path}: no caption line for training image {index + 1} ({image}); "
            f"{sum(c is not None for c in captions)} of {len(captions)} images matched by path"
        )
    return [c for c in captions if c is not None]


def read_captions(
    path: str | Path, image_paths: Sequence[str | PurePath], chars: int = 75
) -> list[str]:
    """One caption per training image, in the split's order (see the module docstring)."""
    path = Path(path).expanduser()
    rows = parse_caption_lines(path)
    captions = _match_by_path(path, rows, image_paths)
    if captions is None:
        if len(rows) != len(image_paths):
            raise CaptionError(
                f"{path}: no caption path matches a training image, and its {len(rows)} "
                f"caption lines are not one per training image ({len(image_paths)}), so they "
                "cannot be matched by line order either: is it the caption file of this "
                "training split?"
            )
        warnings.warn(
            f"{path}: no caption path matches a training image; its {len(rows)} captions "
            "are matched to the training images by line order (line i is training image i)",
            stacklevel=2,
        )
        captions = [caption for _, _, caption in rows]
    return [" ".join(c.split())[:chars] for c in captions]
