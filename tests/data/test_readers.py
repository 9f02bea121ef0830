"""Readers: CSV (format, class list, every bad-input error), VOC XML, COCO JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mlcnc.data.readers import (
    VOC_CLASSES,
    DataError,
    MultiLabelSplit,
    read_csv_split,
    write_csv_split,
)
from mlcnc.data.voc_coco import read_coco, read_voc

# ---------------------------------------------------------------------------- CSV


def _csv(folder: Path, text: str, images: tuple[str, ...] = ("a.png", "b.png", "c.png")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in images:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    path = folder / "train.csv"
    path.write_text(text)
    return path


def test_csv_sorted_names_paths_relative_and_empty_labels(tmp_path):
    path = _csv(tmp_path, "image,labels\na.png,dog;cat\nb.png,\nc.png, dog \n")
    split = read_csv_split(path)
    assert split.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(split.labels, [[1, 1], [0, 0], [0, 1]])
    assert split.labels.dtype == np.uint8
    assert split.image_paths == [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"]
    np.testing.assert_array_equal(split.class_freq, [1, 2])
    np.testing.assert_array_equal(split.neg_class_freq, [2, 1])
    assert split.source == str(path)


def test_csv_classes_txt_fixes_order_and_unused_classes(tmp_path):
    path = _csv(tmp_path, "image,labels\na.png,dog\nb.png,cat\n")
    (tmp_path / "classes.txt").write_text("dog\nzebra\ncat\n")
    split = read_csv_split(path)
    assert split.class_names == ["dog", "zebra", "cat"]
    np.testing.assert_array_equal(split.labels, [[1, 0, 0], [0, 0, 1]])


def test_csv_explicit_class_names_and_subfolder(tmp_path):
    path = _csv(tmp_path, "image,labels\nimg/a.png,b\n", images=("img/a.png",))
    split = read_csv_split(path, class_names=["a", "b"])
    assert split.image_paths == [tmp_path / "img" / "a.png"]
    np.testing.assert_array_equal(split.labels, [[0, 1]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,labels\na.png,cat\nmissing.png,dog\n", r"train\.csv, line 3: image file not found"),
        ("image,labels\na.png,cat\nb.png,cow\n", r"train\.csv, line 3: unknown class name 'cow'"),
        ("image,labels\na.png,cat\nb.png,dog,extra\n", r"train\.csv, line 3: malformed row"),
        ("image,labels\na.png,cat;;dog\n", r"train\.csv, line 2: empty class name"),
        ("image,labels\na.png,cat\nb.png,dog\na.png,dog\n", r"line 4: duplicate image entry 'a\.png' \(the same file as line 2\)"),
        ("image,labels\na.png,cat\n./b.png,dog\nb.png,dog\n", r"line 4: duplicate image entry 'b\.png' \(the same file as line 3\)"),
        ("image,labels\na.png,cat\nsub/../a.png,dog\n", r"line 3: duplicate image entry 'sub/\.\./a\.png' \(the same file as line 2\)"),
        ("image,labels\n", r"train\.csv: the dataset is empty"),
        ("", r"train\.csv, line 1: the file is empty; the first line must be the header 'image,labels'"),
        ("path,classes\na.png,cat\n", r"line 1: header must be 'image,labels', got 'path,classes'; make the first line exactly: image,labels"),
        ("image,labels\na.png,cat\nb.png,\"" + "x" * 140_000 + "\"\n", r"train\.csv, line 3: not a readable CSV line \(field larger than field limit"),
    ],
)  # fmt: skip
def test_csv_bad_input_names_file_and_line(tmp_path, text, message):
    path = _csv(tmp_path, text)
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match=message):
        read_csv_split(path, check_files=True)


def test_csv_missing_file_and_duplicate_class_list(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: CSV file not found"):
        read_csv_split(tmp_path / "nope.csv")
    path = _csv(tmp_path, "image,labels\na.png,cat\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(DataError, match=r"classes\.txt, line 3: duplicate class 'cat'"):
        read_csv_split(path)


def test_write_csv_split_round_trip_and_classes_guard(tmp_path):
    path = _csv(tmp_path / "in", "image,labels\na.png,dog;cat\nb.png,\nc.png,dog\n")
    split = read_csv_split(path)
    out = write_csv_split(split.subset([2, 0]), tmp_path / "out" / "sub.csv")
    back = read_csv_split(out)
    assert back.class_names == ["cat", "dog"]
    assert back.image_paths == [
        tmp_path / "out" / ".." / "in" / "c.png",
        tmp_path / "out" / ".." / "in" / "a.png",
    ]
    np.testing.assert_array_equal(back.labels, [[0, 1], [1, 1]])
    renamed = MultiLabelSplit(split.image_paths, split.labels, ["x", "y"], "s")
    with pytest.raises(DataError, match="holds other classes"):
        write_csv_split(renamed, tmp_path / "out" / "other.csv")


def test_split_validates_shape():
    with pytest.raises(DataError, match="does not match"):
        MultiLabelSplit([Path("a")], np.zeros((2, 3)), ["a", "b", "c"], "s")
    with pytest.raises(DataError, match="empty"):
        MultiLabelSplit([], np.zeros((0, 3)), ["a", "b", "c"], "s")


# ---------------------------------------------------------------------------- VOC


def _voc_xml(objects: list[tuple[str, int | None]]) -> str:
    parts = ["<annotation><filename>x.jpg</filename>"]
    for name, difficult in objects:
        tag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
        parts.append(f"<object><name>{name}</name><pose>Left</pose>{tag}<bndbox/></object>")
    return "".join(parts) + "</annotation>"


def write_voc_tree(
    root: Path, annotations: dict[str, list[tuple[str, int | None]]], image_set: str = "trainval"
) -> Path:
    """A VOC year folder: Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/<set>.txt."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in annotations.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(objects))
        (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"")
    (root / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(annotations) + "\n")
    return root


def test_voc_difficult_counts_as_positive_and_option(tmp_path):
    root = write_voc_tree(
        tmp_path / "VOC2012",
        {
            "2008_000001": [("dog", 0), ("dog", 1), ("person", None)],
            "2008_000002": [("cow", 1)],  # only a difficult cow: still positive
            "2008_000003": [],  # no objects: all-negative row
        },
    )
    split = read_voc(root)
    assert split.class_names == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    expected = np.zeros((3, 20), dtype=np.uint8)
    expected[0, [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]] = 1
    expected[1, VOC_CLASSES.index("cow")] = 1
    np.testing.assert_array_equal(split.labels, expected)
    strict = read_voc(root, use_difficult=False)
    expected[1] = 0
    np.testing.assert_array_equal(strict.labels, expected)
    ordered = read_voc(root, ["2008_000003", "2008_000001"])
    assert [p.stem for p in ordered.image_paths] == ["2008_000003", "2008_000001"]
    assert ordered.image_paths[0] == root / "JPEGImages" / "2008_000003.jpg"


def test_voc_errors_name_the_file(tmp_path):
    root = write_voc_tree(tmp_path / "VOC", {"a": [("unicorn", 0)], "b": [("dog", 0)]})
    with pytest.raises(DataError, match=r"a\.xml: unknown VOC class 'unicorn'"):
        read_voc(root)
    (root / "Annotations" / "b.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match=r"b\.xml: malformed XML"):
        read_voc(root, ["b"])
    with pytest.raises(DataError, match=r"c\.xml: annotation file not found"):
        read_voc(root, ["c"])
    (root / "Annotations" / "b.xml").write_text(_voc_xml([("dog", 0)]))
    (root / "JPEGImages" / "b.jpg").unlink()
    read_voc(root, ["b"])  # images are not looked at unless asked
    with pytest.raises(DataError, match=r"VOC, row 1: image file not found: .*b\.jpg"):
        read_voc(root, ["b"], check_files=True)
    (root / "Annotations" / "a.xml").write_text(_voc_xml([("dog", 0)]))
    with pytest.raises(
        DataError, match=r"trainval\.txt, line 2: image file not found: .*JPEGImages/b\.jpg$"
    ):
        read_voc(root, check_files=True)
    assert read_voc(root).lines == [1, 2] and read_voc(root).where(1).endswith(
        "trainval.txt, line 2"
    )
    with pytest.raises(DataError, match=r"duplicate image entry 'a' \(entry 2, first at entry 1\)"):
        read_voc(root, ["a", "a"])
    (root / "ImageSets" / "Main" / "dup.txt").write_text("a\n\nb\na 1\n")
    with pytest.raises(
        DataError, match=r"dup\.txt: duplicate image entry 'a' \(line 4, first on line 1\)"
    ):
        read_voc(root, "dup")
    (root / "ImageSets" / "Main" / "latin.txt").write_bytes(b"a\r\nb\xe9\r\n")
    with pytest.raises(DataError, match=r"latin\.txt, line 2: not UTF-8 text \(byte 0xe9\)"):
        read_voc(root, "latin")
    with pytest.raises(DataError, match=r"test\.txt: image-set list not found"):
        read_voc(root, "test")
    with pytest.raises(DataError, match="not a VOC year folder"):
        read_voc(tmp_path)


# --------------------------------------------------------------------------- COCO

COCO_CATEGORIES = [(1, "person"), (3, "car"), (90, "toothbrush"), (18, "dog")]  # not sorted


def write_coco_json(
    path: Path, image_dir: Path, images: list[int], annotations: list[dict]
) -> Path:
    image_dir.mkdir(parents=True, exist_ok=True)
    for image_id in images:
        (image_dir / f"{image_id:012d}.jpg").write_bytes(b"")
    data = {
        "images": [
            {"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in images
        ],
        "annotations": [{"id": k + 1, **a} for k, a in enumerate(annotations)],
        "categories": [
            {"id": cid, "name": name, "supercategory": "x"} for cid, name in COCO_CATEGORIES
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _ann(
    image_id: int,
    category_id: int,
    *,
    crowd: int = 0,
    w: float = 10,
    h: float = 10,
    area: float | None = None,
) -> dict:
    return {
        "image_id": image_id,
        "category_id": category_id,
        "iscrowd": crowd,
        "bbox": [1, 1, w, h],
        "area": w * h if area is None else area,
    }


def test_coco_category_order_crowd_degenerate_and_empty_images(tmp_path):
    annotation = write_coco_json(
        tmp_path / "annotations" / "instances.json",
        tmp_path / "images",
        images=[30, 10, 20],
        annotations=[
            _ann(10, 90),
            _ann(10, 1, crowd=1),  # crowd only: negative by default
            _ann(20, 18),
            _ann(20, 3, w=0.5),  # degenerate width: ignored by default
            _ann(20, 1, area=0),  # zero area: ignored by default
        ],
    )
    split = read_coco(annotation, tmp_path / "images")
    assert split.class_names == ["person", "car", "dog", "toothbrush"]  # category-id order
    assert [p.name for p in split.image_paths] == [f"{i:012d}.jpg" for i in (10, 20, 30)]
    np.testing.assert_array_equal(split.labels, [[0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]])
    loose = read_coco(
        annotation, tmp_path / "images", include_crowd=True, drop_degenerate_boxes=False
    )
    np.testing.assert_array_equal(loose.labels, [[1, 0, 0, 1], [1, 1, 1, 0], [0, 0, 0, 0]])
    chosen = read_coco(annotation, tmp_path / "images", image_ids=[30, 10])
    np.testing.assert_array_equal(chosen.labels, [[0, 0, 0, 0], [0, 0, 0, 1]])


def test_coco_errors(tmp_path):
    annotation = write_coco_json(tmp_path / "a.json", tmp_path / "img", [1, 2], [_ann(1, 1)])
    with pytest.raises(DataError, match=r"requested image id\(s\) not in the file, e.g. \[7\]"):
        read_coco(annotation, tmp_path / "img", image_ids=[1, 7])
    with pytest.raises(DataError, match="duplicate image entry 1"):
        read_coco(annotation, tmp_path / "img", image_ids=[1, 1])
    (tmp_path / "img" / f"{2:012d}.jpg").unlink()
    split = read_coco(annotation, tmp_path / "img")
    assert (split.lines, split.line_kind) == ([1, 2], "image id")
    with pytest.raises(
        DataError, match=r"a\.json, image id 2: image file not found: .*000000000002\.jpg$"
    ):
        read_coco(annotation, tmp_path / "img", check_files=True)
    with pytest.raises(DataError, match="COCO annotation file not found"):
        read_coco(tmp_path / "missing.json", tmp_path / "img")
    bad = write_coco_json(tmp_path / "b.json", tmp_path / "img", [1], [_ann(1, 5)])
    with pytest.raises(DataError, match="unknown category_id 5"):
        read_coco(bad, tmp_path / "img")


def test_csv_bom_and_relative_csv_path_give_absolute_images(tmp_path, monkeypatch):
    path = _csv(tmp_path, "\ufeffimage,labels\na.png,cat\n")
    monkeypatch.chdir(tmp_path)
    split = read_csv_split("train.csv")
    assert split.image_paths == [tmp_path / "a.png"] and split.image_paths[0].is_absolute()
    assert split.class_names == ["cat"]
    assert path.exists()


def test_coco_file_that_is_not_an_instances_file(tmp_path):
    for name, text in (("list.json", "[1, 2]"), ("broken.json", "{not json")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=rf"{name}: not a COCO instances file"):
            read_coco(tmp_path / name, tmp_path)


# ------------------------------------------------- encodings, line numbers, paths


def test_bom_and_crlf_in_csv_and_class_list(tmp_path):
    path = _csv(tmp_path, "")
    path.write_bytes(b"\xef\xbb\xbfimage,labels\r\na.png,dog\r\n\r\nb.png,cat;dog\r\n")
    (tmp_path / "classes.txt").write_bytes(b"\xef\xbb\xbfdog\r\ncat\r\n")
    split = read_csv_split(path)
    assert split.class_names == ["dog", "cat"]  # no '\ufeffdog', no 'cat\r'
    np.testing.assert_array_equal(split.labels, [[1, 0], [1, 1]])
    assert split.lines == [2, 4]  # the blank line 3 is skipped, numbers stay true
    assert split.where(1) == f"{path}, line 4"


@pytest.mark.parametrize(
    ("csv_bytes", "classes_bytes", "message"),
    [
        (b"image,labels\na.png,caf\xe9\n", None, r"train\.csv, line 2: not UTF-8 text \(byte 0xe9 in the labels\); save the file as UTF-8"),
        (b"image,labels\na.png,cat\n", b"cat\ncaf\xe9\n", r"classes\.txt, line 2: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"),
        (b"image,lab\xe9ls\na.png,cat\n", None, r"train\.csv, line 1: header must be 'image,labels', got 'image,lab\\xe9ls'"),
    ],
)  # fmt: skip
def test_non_utf8_text_names_the_file_and_line(tmp_path, csv_bytes, classes_bytes, message):
    path = _csv(tmp_path, "")
    path.write_bytes(csv_bytes)
    if classes_bytes is not None:
        (tmp_path / "classes.txt").write_bytes(classes_bytes)
    with pytest.raises(DataError, match=message):
        read_csv_split(path)


def test_non_utf8_image_path_round_trips_as_bytes(tmp_path):
    name = b"caf\xe9.png"  # a latin-1 file name on a UTF-8 system
    (tmp_path / os.fsdecode(name)).write_bytes(b"x")
    path = tmp_path / "train.csv"
    path.write_bytes(b"image,labels\n" + name + b",cat\n")
    split = read_csv_split(path, check_files=True)
    assert os.fsencode(split.image_paths[0]) == os.fsencode(tmp_path) + b"/" + name
    out = write_csv_split(split, tmp_path / "copy" / "train.csv")
    assert out.read_bytes() == b"image,labels\r\n../" + name + b",cat\r\n"
    assert read_csv_split(out).image_paths[0].resolve() == split.image_paths[0].resolve()
    (tmp_path / os.fsdecode(name)).unlink()
    with pytest.raises(DataError) as err:
        read_csv_split(path, check_files=True)
    assert str(err.value).endswith(r"caf\xe9.png")  # shown as an escape, printable
    str(err.value).encode("utf-8")


def test_missing_files_are_refused_all_in_one_line(tmp_path):
    path = _csv(tmp_path, "image,labels\na.png,cat\nx.png,cat\nsub,cat\nbroken.png,cat\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "broken.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(DataError) as err:
        read_csv_split(path, check_files=True)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}, line 3: image file not found: {tmp_path / 'x.png'}")
    assert message.endswith("(and 2 more bad image paths; `mlcnc data check` lists them all)")


def test_subset_keeps_line_numbers_unless_the_source_changes(tmp_path):
    split = read_csv_split(_csv(tmp_path, "image,labels\na.png,cat\n\nb.png,\nc.png,cat\n"))
    assert split.lines == [2, 4, 5]
    assert split.subset([2, 0]).lines == [5, 2]
    assert split.subset([2, 0], source="other.csv").lines is None
    with pytest.raises(DataError, match="2 line numbers for 1 images"):
        MultiLabelSplit([Path("a")], np.zeros((1, 1)), ["a"], "s", [1, 2])
