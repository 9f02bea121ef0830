"""mlcnc.data.check: every problem of a split at once, with its line; dropping bad rows;
train/evaluation overlap; trainability."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bad_inputs
from mlcnc.data.check import (
    BadImagesError,
    check_split,
    check_splits,
    check_trainable,
    drop_bad_rows,
    drop_bad_rows_from_splits,
    summarize,
    write_problems,
)
from mlcnc.data.readers import DataError, MultiLabelSplit, read_csv_split


def _hostile_csv(folder: Path) -> Path:
    """A CSV listing good and bad images; the expected problem per line is in BAD."""
    img = folder / "img"
    img.mkdir(parents=True)
    (img / "good.png").write_bytes(bad_inputs.encoded())
    (img / "grey.jpg").write_bytes(bad_inputs.encoded("L", "JPEG"))
    bad_inputs.animated(img / "anim.gif", "GIF")
    bad_inputs.cmyk_jpeg(img / "cmyk.jpg")
    bad_inputs.huge_png(img / "huge.png", side=2000)  # 4 M pixels: above a 1 M limit
    bad_inputs.truncated_png(img / "trunc.png")
    bad_inputs.text_file(folder / "passwd")
    (img / "folder.png").mkdir()
    (img / "broken.png").symlink_to(img / "gone.png")
    (img / "empty.png").write_bytes(b"")
    (img / "bitmap.bmp").write_bytes(bad_inputs.encoded(fmt="BMP"))
    (img / "link.png").symlink_to(img / "good.png")
    os.link(img / "grey.jpg", img / "hard.jpg")
    rows = [
        "img/good.png,a",  # line 2
        "img/grey.jpg,b",  # 3
        "img/anim.gif,a",  # 4
        "img/cmyk.jpg,b",  # 5
        "img/huge.png,a",  # 6
        "img/trunc.png,a",  # 7
        "passwd,b",  # 8
        "img/folder.png,a",  # 9
        "img/broken.png,a",  # 10
        "img/missing.png,b",  # 11
        "img/empty.png,a",  # 12
        "img/bitmap.bmp,a",  # 13
        "img/link.png,b",  # 14
        "img/hard.jpg,b",  # 15
    ]
    path = folder / "train.csv"
    path.write_text("image,labels\n" + "\n".join(rows) + "\n")
    return path


BAD = {
    6: "4,000,000 pixels is above the limit of 1,000,000 (2000 x 2000)",
    7: "corrupt PNG data",
    8: "not an image file (a text file",
    9: "a folder, not an image file",
    10: "broken symbolic link (to ",
    11: "file not found",
    12: "empty file (0 bytes)",
    13: "unsupported image format BMP",
    14: "the same image file as {csv}:2; list it once",
    15: "the same image file as {csv}:3; list it once",
}


def test_check_split_reports_every_problem_with_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # None below sets it
    csv_path = _hostile_csv(tmp_path)
    split = read_csv_split(csv_path)
    problems = check_split(split, max_pixels=1_000_000, workers=3, progress=False)
    assert [p.line for p in problems] == sorted(BAD)
    for problem in problems:
        assert BAD[problem.line].format(csv=csv_path) in problem.reason, problem
        assert problem.source == str(csv_path)
        assert problem.path == split.image_paths[problem.row]
        assert split.lines[problem.row] == problem.line
        assert str(problem).startswith(f"{csv_path}:{problem.line}: {problem.path}: ")
    # Threads change nothing; without a limit the large image is fine.
    assert check_split(split, 1_000_000, workers=1, progress=False) == problems
    assert 6 not in [p.line for p in check_split(split, None, progress=False)]
    summary = summarize(problems, {"train": split})
    assert summary.startswith(
        "checked 14 rows in 1 split(s) (train: 14): 10 bad row(s) of 14, 10 problem(s) "
        "(duplicate: 2, too large: 1,"
    )


def test_decode_finds_truncated_jpeg_that_the_header_check_passes(tmp_path):
    path = bad_inputs.truncated_jpeg(tmp_path / "cut.jpg")
    split = MultiLabelSplit([path], np.array([[1]]), ["a"], "list.txt", [7])
    assert check_split(split, progress=False) == []
    (problem,) = check_split(split, decode=True, progress=False)
    assert (problem.line, problem.row) == (7, 0) and "cannot decode JPEG image" in problem.reason


def test_drop_bad_rows_keeps_every_good_row_once_and_records_the_rest(tmp_path):
    split = read_csv_split(_hostile_csv(tmp_path))
    kept, dropped = drop_bad_rows(split, max_pixels=1_000_000, progress=False)
    assert kept.lines == [2, 3, 4, 5]
    assert sorted(kept.lines + [p.line for p in dropped]) == split.lines  # each row once
    np.testing.assert_array_equal(kept.labels, split.labels[:4])
    assert check_split(kept, 1_000_000, progress=False) == []
    out = write_problems(dropped, tmp_path / "run" / "dropped_images.csv")
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["line"]) for r in rows] == sorted(BAD)
    assert rows[0]["image"] == str(split.image_paths[4]) and "pixels" in rows[0]["reason"]
    same, none = drop_bad_rows(kept, progress=False)
    assert same is kept and none == []


def test_drop_bad_rows_refuses_a_split_with_nothing_left(tmp_path):
    split = MultiLabelSplit([tmp_path / "a.png", tmp_path / "b.png"], np.eye(2), ["a", "b"], "s")
    with pytest.raises(BadImagesError, match=r"2 bad image\(s\) in s; first: s \(row 1\): .*"
                       r"a\.png: file not found; no image of the split is readable"):  # fmt: skip
        drop_bad_rows(split, progress=False)


def test_evaluation_images_that_are_training_images_are_refused(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.png").write_bytes(bad_inputs.encoded())
    (tmp_path / "c_link.png").symlink_to(tmp_path / "c.png")

    def split(names, source):
        paths = [tmp_path / f"{n}.png" for n in names]
        return MultiLabelSplit(paths, np.ones((len(names), 1)), ["x"], source, list(range(2, 2 + len(names))))  # fmt: skip

    splits = {
        "train": split(["a", "c"], "train.csv"),
        "val": split(["b"], "val.csv"),
        "test": split(["b", "c_link"], "test.csv"),  # b shared with val: allowed
    }
    (leak,) = check_splits(splits, progress=False)
    assert (leak.split, leak.source, leak.line) == ("test", "test.csv", 3)
    assert leak.reason.startswith("also a training image (train.csv:3)")
    with pytest.raises(BadImagesError, match="remove the shared images") as err:
        drop_bad_rows_from_splits(splits, progress=False)
    assert err.value.problems == [leak]
    del splits["test"]
    kept, dropped = drop_bad_rows_from_splits(splits, progress=False)
    assert dropped == [] and kept.keys() == splits.keys()


def test_coco_rows_are_located_by_image_id(tmp_path):
    split = MultiLabelSplit(
        [tmp_path / "000000000139.jpg"], np.ones((1, 1)), ["x"], "instances.json", [139],
        line_kind="image id",
    )  # fmt: skip
    (problem,) = check_split(split, progress=False)
    assert (
        str(problem)
        == f"instances.json (image id 139): {tmp_path}/000000000139.jpg: file not found"
    )


@pytest.mark.parametrize(
    ("labels", "names", "options", "message"),
    [
        ([[1, 0]], ["a", "b"], {}, r"t\.csv: 1 training image\(s\); training needs at least 2"),
        ([[1], [0]], ["a"], {}, r"t\.csv: 1 class\(es\) \(a\); training needs at least 2"),
        ([[0, 0], [0, 0]], ["a", "b"], {}, "no image has any label"),
        ([[1, 0], [1, 0]], ["a", "b"], {"require_every_class": True}, r"1 class\(es\) without a positive training image \(b\)"),
    ],
)  # fmt: skip
def test_check_trainable(labels, names, options, message):
    split = MultiLabelSplit(
        [Path(f"{i}.png") for i in range(len(labels))], np.array(labels), names, "t.csv"
    )
    with pytest.raises(DataError, match=message):
        check_trainable(split, **options)


def test_check_trainable_accepts_a_small_real_split():
    split = MultiLabelSplit([Path("a"), Path("b")], np.array([[1, 0], [0, 0]]), ["a", "b"], "t")
    check_trainable(split)  # an empty class is allowed unless asked
    with pytest.raises(DataError):
        check_trainable(split, require_every_class=True)
