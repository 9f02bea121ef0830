"""Readers that turn an annotated image collection into a ``MultiLabelSplit``.

Three sources: Pascal VOC (VOCdevkit XML), COCO (instances JSON via pycocotools) and the
generic CSV format a user's own data comes in (``image,labels`` with ``;``-separated class
names). Every reader checks that each image file exists and fails with an error naming the
file (and line) at fault; nothing is silently dropped.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
"""The 20 VOC classes in the index order of the VOC-LT benchmark files (alphabetical)."""

CSV_HEADER = ("image", "labels")
LABEL_SEPARATOR = ";"
CLASSES_FILE = "classes.txt"


class DataError(ValueError):
    """Bad dataset input; the message names the file (and line) at fault."""


@dataclass
class MultiLabelSplit:
    """One split of a multi-label dataset.

    image_paths: N image files.
    labels:      (N, C) uint8 multi-hot matrix, row i for ``image_paths[i]``.
    class_names: C class names, in label-column order.
    source:      the file (or folder) the split was read from, for messages.
    """

    image_paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    source: str

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.uint8)
        if self.labels.ndim != 2:
            raise DataError(f"{self.source}: labels must be (N, C), got shape {self.labels.shape}")
        if self.labels.shape != (len(self.image_paths), len(self.class_names)):
            raise DataError(
                f"{self.source}: labels shape {self.labels.shape} does not match "
                f"{len(self.image_paths)} images x {len(self.class_names)} classes"
            )
        if not self.image_paths:
            raise DataError(f"{self.source}: the dataset is empty (no images)")

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_freq(self) -> np.ndarray:
        """(C,) int64: number of images positive for each class."""
        return self.labels.sum(axis=0, dtype=np.int64)

    @property
    def neg_class_freq(self) -> np.ndarray:
        """(C,) int64: number of images negative for each class."""
        return len(self) - self.class_freq

    def subset(
        self, indices: Sequence[int] | np.ndarray, source: str | None = None
    ) -> MultiLabelSplit:
        """The rows ``indices`` (in that order), same classes."""
        indices = np.asarray(indices, dtype=np.int64)
        return MultiLabelSplit(
            image_paths=[self.image_paths[i] for i in indices],
            labels=self.labels[indices],
            class_names=list(self.class_names),
            source=source or self.source,
        )


# --------------------------------------------------------------------------- VOC


def read_voc(
    voc_root: str | Path,
    image_set: str | Sequence[str] = "trainval",
    *,
    use_difficult: bool = True,
    check_files: bool = True,
) -> MultiLabelSplit:
    """Read a VOCdevkit year folder (``.../VOCdevkit/VOC2007`` or ``VOC2012``).

    image_set: the name of a list in ``ImageSets/Main`` (``trainval``, ``test``...) or an
    explicit sequence of image ids (their order is kept). An image is positive for a class
    if its XML has at least one object of that class; objects marked ``difficult`` count
    as positives (the VOC-LT protocol) unless ``use_difficult=False``.
    """
    root = Path(voc_root)
    annotations = root / "Annotations"
    if not annotations.is_dir():
        raise DataError(
            f"{root}: not a VOC year folder (no Annotations/); pass the folder that holds "
            "Annotations/, JPEGImages/ and ImageSets/, e.g. VOCdevkit/VOC2012"
        )
    if isinstance(image_set, str):
        list_file = root / "ImageSets" / "Main" / f"{image_set}.txt"
        if not list_file.is_file():
            raise DataError(f"{list_file}: image-set list not found")
        image_ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        source = str(list_file)
    else:
        image_ids = [str(i) for i in image_set]
        source = str(root)
    _refuse_duplicates(image_ids, source)

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
        image_path = root / "JPEGImages" / f"{image_id}.jpg"
        if check_files and not image_path.is_file():
            raise DataError(f"{image_path}: image file not found (listed in {source})")
        image_paths.append(image_path)
    return MultiLabelSplit(image_paths, labels, list(VOC_CLASSES), source)


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
    check_files: bool = True,
) -> MultiLabelSplit:
    """Read a COCO instances JSON with pycocotools.

    Classes are the JSON's categories in category-id order (COCO's 80, for COCO-LT).
    image_ids: images to read, in that order; None reads every image of the JSON sorted by id.
    Images without (kept) annotations are all-negative rows, never dropped.

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
        _refuse_duplicates(ids, str(annotation_json))
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
        image_path = image_dir / coco.imgs[image_id]["file_name"]
        if check_files and not image_path.is_file():
            raise DataError(f"{image_path}: image file not found (image id {image_id})")
        image_paths.append(image_path)
    return MultiLabelSplit(image_paths, labels, class_names, str(annotation_json))


# --------------------------------------------------------------------------- CSV


def read_class_list(path: str | Path) -> list[str]:
    """One class name per line; blank lines ignored; duplicates refused."""
    path = Path(path)
    names = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in names:
            raise DataError(f"{path}, line {line_number}: duplicate class {name!r}")
        names.append(name)
    if not names:
        raise DataError(f"{path}: no class names")
    return names


def read_csv_split(
    csv_path: str | Path,
    class_names: Sequence[str] | None = None,
    *,
    check_files: bool = True,
) -> MultiLabelSplit:
    """Read a split in the generic CSV format.

    Header ``image,labels``; ``image`` a path relative to the CSV's folder (or absolute);
    ``labels`` class names separated by ``;`` (may be empty: an all-negative image).
    Classes: ``class_names`` if given, else ``classes.txt`` beside the CSV if present, else
    the sorted names seen in this file (so read val/test with the training split's names).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: CSV file not found")
    folder = csv_path.absolute().parent  # image paths stay valid if the cwd changes
    rows: list[tuple[int, str, list[str]]] = []
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:  # tolerate a BOM
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
            raise DataError(f"{csv_path}, line 1: header must be 'image,labels', got {header}")
        seen: dict[str, int] = {}
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != 2 or not fields[0].strip():
                raise DataError(
                    f"{csv_path}, line {line}: malformed row {fields}; expected 'image,labels'"
                )
            image = fields[0].strip()
            if image in seen:
                raise DataError(
                    f"{csv_path}, line {line}: duplicate image entry {image!r} "
                    f"(first on line {seen[image]})"
                )
            seen[image] = line
            names = (
                [n.strip() for n in fields[1].split(LABEL_SEPARATOR)] if fields[1].strip() else []
            )
            if any(not n for n in names):
                raise DataError(
                    f"{csv_path}, line {line}: empty class name in labels {fields[1]!r}"
                )
            rows.append((line, image, names))
    if not rows:
        raise DataError(f"{csv_path}: the dataset is empty (no rows after the header)")

    if class_names is None:
        classes_file = folder / CLASSES_FILE
        if classes_file.is_file():
            class_names = read_class_list(classes_file)
        else:
            class_names = sorted({n for _, _, names in rows for n in names})
            if not class_names:
                raise DataError(f"{csv_path}: no class names in any row and no {CLASSES_FILE}")
    class_names = list(class_names)
    class_index = {name: c for c, name in enumerate(class_names)}

    labels = np.zeros((len(rows), len(class_names)), dtype=np.uint8)
    image_paths = []
    for row, (line, image, names) in enumerate(rows):
        for name in names:
            if name not in class_index:
                raise DataError(f"{csv_path}, line {line}: unknown class name {name!r}")
            labels[row, class_index[name]] = 1
        image_path = folder / image
        if check_files and not image_path.is_file():
            raise DataError(f"{csv_path}, line {line}: image file not found: {image_path}")
        image_paths.append(image_path)
    return MultiLabelSplit(image_paths, labels, class_names, str(csv_path))


def write_csv_split(
    split: MultiLabelSplit, csv_path: str | Path, *, write_classes: bool = True
) -> Path:
    """Write ``split`` in the CSV format, image paths relative to the CSV's folder.

    With ``write_classes`` a ``classes.txt`` beside it fixes the class order; an existing
    one must hold exactly the same classes (it would otherwise change how other CSVs in
    that folder are read).
    """
    csv_path = Path(csv_path)
    folder = csv_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    if write_classes:
        classes_file = folder / CLASSES_FILE
        if classes_file.is_file():
            existing = read_class_list(classes_file)
            if existing != list(split.class_names):
                raise DataError(
                    f"{classes_file}: holds other classes than the split being written to "
                    f"{csv_path}; write it to another folder"
                )
        else:
            classes_file.write_text("".join(f"{n}\n" for n in split.class_names))
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        for path, row in zip(split.image_paths, split.labels, strict=True):
            image = Path(os.path.relpath(Path(path).absolute(), folder.absolute())).as_posix()
            names = LABEL_SEPARATOR.join(split.class_names[c] for c in np.flatnonzero(row))
            writer.writerow((image, names))
    return csv_path


def _refuse_duplicates(ids: Sequence[object], source: str) -> None:
    seen = set()
    for position, image_id in enumerate(ids, start=1):
        if image_id in seen:
            raise DataError(f"{source}: duplicate image entry {image_id!r} (entry {position})")
        seen.add(image_id)
