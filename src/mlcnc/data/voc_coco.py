"""Readers of the two benchmark sources: Pascal VOC (VOCdevkit XML, image-set lists) and
COCO (instances JSON via pycocotools), each into a ``MultiLabelSplit`` (see
``mlcnc.data.readers`` for the CSV format and the split's contract)."""

from __future__ import annotations

import contextlib
import io
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlcnc.data.readers import (
    VOC_CLASSES,
    DataError,
    MultiLabelSplit,
    read_text_file,
    refuse_duplicates,
    refuse_missing_files,
    text_lines,
)


def read_voc(
    voc_root: str | Path,
    image_set: str | Sequence[str] = "trainval",
    *,
    use_difficult: bool = True,
    check_files: bool = False,
) -> MultiLabelSplit:
    """Read a VOCdevkit year folder (``.../VOCdevkit/VOC2007`` or ``VOC2012``).

    image_set: the name of a list in ``ImageSets/Main`` (``trainval``, ``test``...) or an
    explicit sequence of image ids (their order is kept). An image is positive for a class
    if its XML has at least one object of that class; objects marked ``difficult`` count
    as positives (the VOC-LT protocol) unless ``use_difficult=False``. Rows carry the line
    numbers of the image-set list. ``check_files``: refuse missing image files here.
    """
    root = Path(voc_root)
    annotations = root / "Annotations"
    if not annotations.is_dir():
        raise DataError(
            f"{root}: not a VOC year folder (no Annotations/); pass the folder that holds "
            "Annotations/, JPEGImages/ and ImageSets/, e.g. VOCdevkit/VOC2012"
        )
    lines: list[int] | None = None
    if isinstance(image_set, str):
        list_file = root / "ImageSets" / "Main" / f"{image_set}.txt"
        if not list_file.is_file():
            raise DataError(f"{list_file}: image-set list not found")
        image_ids, lines = read_id_list(list_file, "image-set list")
        source = str(list_file)
    else:
        image_ids = [str(i) for i in image_set]
        source = str(root)
    refuse_duplicates(image_ids, source, lines)

    class_index = {name: c for c, name in enumerate(VOC_CLASSES)}
    labels = np.zeros((len(image_ids), len(VOC_CLASSES)), dtype=np.uint8)
    image_paths = []
    for row, image_id in enumerate(image_ids):
        xml_path = annotations / f"{image_id}.xml"
        for name, difficult in _voc_objects(xml_path):
            if name not in class_index:
                raise DataError(f"{xml_path}: unknown VOC class {name!r}")
            if difficult and not use_difficult:
                continue
            labels[row, class_index[name]] = 1
        image_paths.append(root / "JPEGImages" / f"{image_id}.jpg")
    split = MultiLabelSplit(image_paths, labels, list(VOC_CLASSES), source, lines)
    if check_files:
        refuse_missing_files(split)
    return split


def read_id_list(path: str | Path, what: str) -> tuple[list[str], list[int]]:
    """The first token of every non-blank line of a UTF-8 text file, and its line number."""
    ids, lines = [], []
    for number, line in enumerate(text_lines(read_text_file(path, what)), start=1):
        if line.strip():
            ids.append(line.split()[0])
            lines.append(number)
    return ids, lines


def _voc_objects(xml_path: Path) -> list[tuple[str, bool]]:
    """(class name, difficult) for every object of one VOC annotation file."""
    if not xml_path.is_file():
        raise DataError(f"{xml_path}: annotation file not found")
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as err:
        raise DataError(f"{xml_path}: malformed XML ({err})") from None
    objects = []
    for obj in tree.getroot().iter("object"):
        name = obj.findtext("name")
        if name is None or not name.strip():
            raise DataError(f"{xml_path}: an <object> has no <name>")
        difficult = (obj.findtext("difficult") or "0").strip()
        objects.append((name.strip(), difficult not in ("", "0")))
    return objects


# -------------------------------------------------------------------------- COCO


def read_coco(
    annotation_json: str | Path,
    image_dir: str | Path,
    image_ids: Sequence[int] | None = None,
    *,
    include_crowd: bool = False,
    drop_degenerate_boxes: bool = True,
    check_files: bool = False,
) -> MultiLabelSplit:
    """Read a COCO instances JSON with pycocotools.

    Classes are the JSON's categories in category-id order (COCO's 80, for COCO-LT).
    image_ids: images to read, in that order; None reads every image of the JSON sorted by id.
    Images without (kept) annotations are all-negative rows, never dropped. The split's
    ``lines`` are the image ids (``line_kind="image id"``).

    Which annotations make a positive:
    - include_crowd: count ``iscrowd=1`` annotations (default False).
    - drop_degenerate_boxes: ignore annotations with area <= 0 or box width or height < 1
      (default True).
    The defaults are the DistributionBalancedLoss parse (mmdetection's CocoDataset), from
    which COCO-LT's ``gt_labels`` (reference_stats.json) were made. MLC-NC's own COCO test
    loader instead keeps crowd and degenerate boxes: ``include_crowd=True,
    drop_degenerate_boxes=False``.
    """
    from pycocotools.coco import COCO

    annotation_json = Path(annotation_json)
    image_dir = Path(image_dir)
    if not annotation_json.is_file():
        raise DataError(f"{annotation_json}: COCO annotation file not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(annotation_json))
    except (ValueError, KeyError, TypeError, AssertionError) as err:
        raise DataError(f"{annotation_json}: not a COCO instances file ({err!r})") from None

    category_ids = sorted(coco.getCatIds())
    if not category_ids:
        raise DataError(f"{annotation_json}: no categories")
    column = {cat_id: c for c, cat_id in enumerate(category_ids)}
    class_names = [coco.cats[cat_id]["name"] for cat_id in category_ids]

    if image_ids is None:
        ids = sorted(coco.getImgIds())
    else:
        ids = [int(i) for i in image_ids]
        refuse_duplicates(ids, str(annotation_json))
        missing = [i for i in ids if i not in coco.imgs]
        if missing:
            raise DataError(
                f"{annotation_json}: {len(missing)} requested image id(s) not in the file, "
                f"e.g. {missing[:5]}"
            )

    labels = np.zeros((len(ids), len(category_ids)), dtype=np.uint8)
    image_paths = []
    for row, image_id in enumerate(ids):
        for ann in coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0) and not include_crowd:
                continue
            if drop_degenerate_boxes:
                _, _, width, height = ann["bbox"]
                if ann.get("area", 0) <= 0 or width < 1 or height < 1:
                    continue
            if ann["category_id"] not in column:
                raise DataError(
                    f"{annotation_json}: annotation {ann.get('id')} has unknown "
                    f"category_id {ann['category_id']}"
                )
            labels[row, column[ann["category_id"]]] = 1
        image_paths.append(image_dir / coco.imgs[image_id]["file_name"])
    split = MultiLabelSplit(
        image_paths, labels, class_names, str(annotation_json), ids, line_kind="image id"
    )
    if check_files:
        refuse_missing_files(split)
    return split
