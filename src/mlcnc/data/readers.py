"""Readers that turn an annotated image collection into a ``MultiLabelSplit``.

Three sources: Pascal VOC (VOCdevkit XML), COCO (instances JSON via pycocotools) and the
generic CSV format a user's own data comes in (``image,labels`` with ``;``-separated class
names). Readers parse annotations and fail on the first annotation error with a
``DataError`` naming the file and line. They do not open images: ``mlcnc.data.check``
checks every image file of a split (all problems at once), and ``check_files=True`` makes
a reader refuse missing files itself.

Text files (CSV, classes.txt, VOC image-set lists, split files) must be UTF-8; a BOM at the
start and CRLF line ends are accepted. An image path in a CSV may hold bytes that are not
UTF-8 (a file name from another system): they are kept as the same bytes on disk
(``surrogateescape``) and shown as ``\\xNN`` in messages (``show_path``).
"""

from __future__ import annotations

import csv
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlcnc.data.names import (
    other_form_hint,
    refuse_normal_form_twins,
    refuse_special_file,
    special_file_kind,
    windows_separator_hint,
)
from mlcnc.io import open_atomic, write_atomic

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


def show_path(path: str | Path) -> str:
    """``path`` as printable text: bytes of a file name that are not UTF-8 (held as
    surrogate escapes) appear as ``\\xNN`` instead of breaking ``print``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def read_text_file(path: str | Path, what: str = "file") -> str:
    """The text of a UTF-8 file, without a leading BOM; ``DataError`` naming the file (and
    the line of the first byte that is not UTF-8) otherwise. ``what`` names the file's role
    in messages (``class list``, ``image-set list``...)."""
    path = Path(path)
    refuse_special_file(path, what, show_path(path), DataError)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{show_path(path)}: {what} not found") from None
    except IsADirectoryError:
        raise DataError(f"{show_path(path)}: is a folder, not a {what}") from None
    except OSError as err:
        raise DataError(f"{show_path(path)}: cannot read the {what} ({err.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{show_path(path)}, line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); "
            "save the file as UTF-8"
        ) from None


def text_lines(text: str) -> list[str]:
    """Lines of ``text`` split at LF, CRLF or CR only (``str.splitlines`` also splits at
    form feeds and Unicode separators, which would shift line numbers)."""
    lines = re.split(r"\r\n|\n|\r", text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def file_problem(path: str | Path) -> tuple[str | None, os.stat_result | None]:
    """Why ``path`` cannot be an image file (None if it is a non-empty regular file,
    symbolic links followed), and its ``os.stat`` result when it exists."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"broken symbolic link (to {show_path(os.readlink(path))})", None
        hint = windows_separator_hint(path)
        return ("file not found" + (f" ({hint})" if hint else "")), None
    except NotADirectoryError:
        return "file not found (a folder on its path is a file)", None
    except PermissionError:
        return "permission denied", None
    except OSError as err:
        return f"cannot read ({err.strerror or err})", None
    if stat.S_ISDIR(info.st_mode):
        return "a folder, not an image file", info
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a device, pipe or socket)", info
    if info.st_size == 0:
        return "empty file (0 bytes)", info
    return None, info


@dataclass
class MultiLabelSplit:
    """One split of a multi-label dataset.

    image_paths: N image files.
    labels:      (N, C) uint8 multi-hot matrix, row i for ``image_paths[i]``.
    class_names: C class names, in label-column order.
    source:      the file (or folder) the split was read from, for messages.
    lines:       optional N locators of the rows in ``source``: 1-based line numbers (CSV,
                 VOC image-set list, benchmark split file) or, with ``line_kind="image
                 id"``, COCO image ids. None when rows have none (an explicit id list).
    line_kind:   what ``lines`` holds: ``line`` or ``image id``.
    """

    image_paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    source: str
    lines: list[int] | None = None
    line_kind: str = "line"

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
        if self.lines is not None:
            self.lines = [int(n) for n in self.lines]
            if len(self.lines) != len(self.image_paths):
                raise DataError(
                    f"{self.source}: {len(self.lines)} line numbers for "
                    f"{len(self.image_paths)} images"
                )

    def where(self, row: int) -> str:
        """Where row ``row`` comes from, for messages: ``train.csv, line 12``,
        ``instances_val2017.json, image id 139``, or ``VOC2012, row 3`` without lines."""
        if self.lines is None:
            return f"{show_path(self.source)}, row {row + 1}"
        return f"{show_path(self.source)}, {self.line_kind} {self.lines[row]}"

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
        """The rows ``indices`` (in that order), same classes. Line numbers are kept unless
        a new ``source`` is named (they would point into the wrong file)."""
        indices = np.asarray(indices, dtype=np.int64)
        keep_lines = self.lines is not None and source in (None, self.source)
        return MultiLabelSplit(
            image_paths=[self.image_paths[i] for i in indices],
            labels=self.labels[indices],
            class_names=list(self.class_names),
            source=source or self.source,
            lines=[self.lines[i] for i in indices] if keep_lines else None,
            line_kind=self.line_kind,
        )


# --------------------------------------------------------------------------- CSV


def read_class_list(path: str | Path) -> list[str]:
    """One class name per line (UTF-8; BOM and CRLF accepted); blank lines ignored;
    duplicates refused."""
    path = Path(path)
    names: list[str] = []
    first_line: dict[str, int] = {}
    for line_number, line in enumerate(text_lines(read_text_file(path, "class list")), start=1):
        name = line.strip()
        if not name:
            continue
        if name in first_line:
            raise DataError(
                f"{path}, line {line_number}: duplicate class {name!r} "
                f"(first on line {first_line[name]})"
            )
        if LABEL_SEPARATOR in name:
            raise DataError(
                f"{path}, line {line_number}: class name {name!r} holds "
                f"'{LABEL_SEPARATOR}', which separates the labels in a CSV row, so no row "
                f"could name this class; rename it without '{LABEL_SEPARATOR}'"
            )
        first_line[name] = line_number
        names.append(name)
    if not names:
        raise DataError(f"{path}: no class names (one name per line)")
    refuse_normal_form_twins(
        ((name, f"{path}, line {first_line[name]}") for name in names),
        DataError,
        "keep one spelling (save the file in NFC)",
    )
    return names


def read_csv_split(
    csv_path: str | Path,
    class_names: Sequence[str] | None = None,
    *,
    check_files: bool = False,
) -> MultiLabelSplit:
    """Read a split in the generic CSV format.

    Header ``image,labels``; ``image`` a path relative to the CSV's folder (or absolute);
    ``labels`` class names separated by ``;`` (may be empty: an all-negative image).
    Classes: ``class_names`` if given, else ``classes.txt`` beside the CSV if present, else
    the sorted names seen in this file (so read val/test with the training split's names).
    Rows carry their line numbers; two rows naming the same path (after normalisation:
    ``./img/a.png`` is ``img/a.png``) are refused. ``check_files``: refuse missing image
    files here (else ``mlcnc.data.check`` finds them).
    """
    csv_path = Path(csv_path)
    shown = show_path(csv_path)
    if csv_path.is_dir():
        raise DataError(f"{shown}: is a folder, not a CSV file")
    refuse_special_file(csv_path, "CSV file", shown, DataError)
    if not csv_path.is_file():
        raise DataError(f"{shown}: CSV file not found")
    folder = csv_path.absolute().parent  # image paths stay valid if the cwd changes
    rows = _read_csv_rows(csv_path, shown, folder)
    class_names, origin = _csv_class_names(class_names, rows, folder, shown)
    split = MultiLabelSplit(
        [folder / image for _, image, _ in rows],
        _multi_hot_rows(rows, class_names, origin, shown),
        class_names,
        str(csv_path),
        [line for line, _, _ in rows],
    )
    if check_files:
        refuse_missing_files(split)
    return split


CsvRow = tuple[int, str, list[str]]
"""One row of a CSV split: (line number, image path as written, class names)."""


def _read_csv_rows(csv_path: Path, shown: str, folder: Path) -> list[CsvRow]:
    """The rows of a CSV split after its header; blank lines skipped, duplicates refused."""
    rows: list[CsvRow] = []
    # surrogateescape: an image path may hold non-UTF-8 bytes (kept as the bytes on disk);
    # the header and the labels are checked to be UTF-8 below.
    with csv_path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        reader = csv.reader(handle)
        line = 1
        try:
            _check_csv_header(next(reader, None), shown)
            seen: dict[str, int] = {}
            for fields in reader:
                line = reader.line_num
                if not fields or all(not f.strip() for f in fields):
                    continue
                rows.append(_parse_csv_row(fields, line, shown, folder, seen))
        except csv.Error as err:
            line = reader.line_num or line
            raise DataError(f"{shown}, line {line}: not a readable CSV line ({err})") from None
    if not rows:
        raise DataError(f"{shown}: the dataset is empty (no rows after the header)")
    return rows


def _check_csv_header(header: list[str] | None, shown: str) -> None:
    if header is None:
        raise DataError(
            f"{shown}, line 1: the file is empty; the first line must be the header "
            f"'{','.join(CSV_HEADER)}'"
        )
    if tuple(h.strip() for h in header) != CSV_HEADER:
        got = ",".join(header)
        raise DataError(
            f"{shown}, line 1: header must be '{','.join(CSV_HEADER)}', got "
            f"'{show_path(got)}'; make the first line exactly: {','.join(CSV_HEADER)}"
        )


def _parse_csv_row(
    fields: list[str], line: int, shown: str, folder: Path, seen: dict[str, int]
) -> CsvRow:
    """One ``image,labels`` row; ``seen`` (normalised path -> line) refuses duplicates."""
    if len(fields) != 2 or not fields[0].strip():
        raise DataError(
            f"{shown}, line {line}: malformed row {show_path(','.join(fields))!r}; "
            "expected 'image,labels' (quote an image path that holds a comma)"
        )
    image = fields[0].strip()
    if "\0" in image:
        raise DataError(
            f"{shown}, line {line}: the image path {show_path(image.replace(chr(0), '<NUL>'))!r} "
            "holds a NUL byte, which no file name can; fix the row"
        )
    _refuse_non_utf8(fields[1], shown, line, "labels")
    key = os.path.normpath(folder / image)
    if key in seen:
        raise DataError(
            f"{shown}, line {line}: duplicate image entry {show_path(image)!r} "
            f"(the same file as line {seen[key]}); list each image once"
        )
    seen[key] = line
    names = [n.strip() for n in fields[1].split(LABEL_SEPARATOR)] if fields[1].strip() else []
    if any(not n for n in names):
        raise DataError(f"{shown}, line {line}: empty class name in labels {fields[1]!r}")
    return line, image, names


def _csv_class_names(
    class_names: Sequence[str] | None, rows: list[CsvRow], folder: Path, shown: str
) -> tuple[list[str], str]:
    """The split's class names (given, else classes.txt beside the CSV, else the sorted
    names in its rows) and where they came from, for error messages."""
    origin = "the class names given (the training split's)"
    if class_names is None:
        classes_file = folder / CLASSES_FILE
        origin = show_path(classes_file)
        if classes_file.is_symlink() and not classes_file.exists():
            raise DataError(
                f"{origin}: broken symbolic link (to {os.readlink(classes_file)}); fix or "
                "remove it (without a classes.txt the sorted names in the rows are used)"
            )
        if classes_file.is_file() or special_file_kind(classes_file) is not None:
            class_names = read_class_list(classes_file)
        else:
            refuse_normal_form_twins(
                ((n, f"{shown}, line {line}") for line, _, names in rows for n in names),
                DataError,
                "write it one way in every row (NFC), or list the classes in a classes.txt",
            )
            class_names = sorted({n for _, _, names in rows for n in names})
            if not class_names:
                raise DataError(f"{shown}: no class names in any row and no {CLASSES_FILE}")
    return list(class_names), origin


def _multi_hot_rows(
    rows: list[CsvRow], class_names: list[str], origin: str, shown: str
) -> np.ndarray:
    """(N, C) uint8 labels of the rows; an unknown class name is an error naming its line."""
    class_index = {name: c for c, name in enumerate(class_names)}
    labels = np.zeros((len(rows), len(class_names)), dtype=np.uint8)
    for row, (line, _, names) in enumerate(rows):
        for name in names:
            if name not in class_index:
                twin = other_form_hint(name, class_names)
                raise DataError(
                    f"{shown}, line {line}: unknown class name {name!r}"
                    + (f": {twin}" if twin else "")
                    + f"; the {len(class_names)} known classes come from {origin}"
                )
            labels[row, class_index[name]] = 1
    return labels


def refuse_missing_files(split: MultiLabelSplit) -> None:
    """``DataError`` naming the first row whose image path is not a file (missing, broken
    link, folder, device) and how many more there are; files are not opened (an empty or
    corrupt file is for ``mlcnc.data.check`` to find)."""
    bad = []
    for row, path in enumerate(split.image_paths):
        problem, info = file_problem(path)
        if problem is not None and not (info is not None and stat.S_ISREG(info.st_mode)):
            bad.append((row, path, problem))
    if not bad:
        return
    row, path, problem = bad[0]
    if problem == "file not found":
        problem = "image file not found"
    more = (
        f" (and {len(bad) - 1} more bad image paths; `mlcnc data check` lists them all)"
        if len(bad) > 1
        else ""
    )
    raise DataError(f"{split.where(row)}: {problem}: {show_path(path)}{more}")


def write_csv_split(
    split: MultiLabelSplit, csv_path: str | Path, *, write_classes: bool = True
) -> Path:
    """Write ``split`` in the CSV format, image paths relative to the CSV's folder.

    With ``write_classes`` a ``classes.txt`` beside it fixes the class order; an existing
    one must hold exactly the same classes (it would otherwise change how other CSVs in
    that folder are read). Non-UTF-8 bytes of file names are written as the same bytes.
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
            write_atomic(classes_file, "".join(f"{n}\n" for n in split.class_names))
    with open_atomic(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        for path, row in zip(split.image_paths, split.labels, strict=True):
            image = Path(os.path.relpath(Path(path).absolute(), folder.absolute())).as_posix()
            names = LABEL_SEPARATOR.join(split.class_names[c] for c in np.flatnonzero(row))
            writer.writerow((image, names))
    return csv_path


def _refuse_non_utf8(text: str, shown: str, line: int, what: str) -> None:
    for char in text:
        if "\udc80" <= char <= "\udcff":  # a byte that is not UTF-8, surrogate-escaped
            raise DataError(
                f"{shown}, line {line}: not UTF-8 text (byte 0x{ord(char) - 0xDC00:02x} in "
                f"the {what}); save the file as UTF-8"
            )


def refuse_duplicates(
    ids: Sequence[object], source: str, lines: Sequence[int] | None = None
) -> None:
    seen: dict[object, int] = {}
    for position, image_id in enumerate(ids):
        if image_id in seen:
            if lines is None:
                where = f"entry {position + 1}, first at entry {seen[image_id] + 1}"
            else:
                where = f"line {lines[position]}, first on line {lines[seen[image_id]]}"
            raise DataError(f"{source}: duplicate image entry {image_id!r} ({where})")
        seen[image_id] = position
