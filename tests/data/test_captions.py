"""LMPT caption files: matched to the training images by path, else by line order; every
problem is one line naming the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcnc.data.captions import CaptionError, read_captions

IMAGES = [
    "/data/voc/VOCdevkit/VOC2012/JPEGImages/2008_000023.jpg",
    "/data/voc/VOCdevkit/VOC2012/JPEGImages/2008_000028.jpg",
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "captions.txt"
    path.write_text(text)
    return path


def test_matched_by_path_in_any_order_and_cut(tmp_path):
    path = write(
        tmp_path,
        "VOCdevkit/VOC2012/JPEGImages/2008_000028.jpg two cars   driving down a city street\n"
        "\n"
        "VOCdevkit/VOC2012/JPEGImages/2008_000023.jpg " + "a bottle of beer " * 10 + "\n"
        "VOCdevkit/VOC2012/JPEGImages/2010_999999.jpg an image not in the split\n",
    )
    got = read_captions(path, IMAGES)
    assert got[0] == ("a bottle of beer " * 10)[:75] and len(got[0]) == 75
    assert got[1] == "two cars driving down a city street"


def test_matched_by_line_order_when_no_path_matches_with_a_note(tmp_path):
    path = write(tmp_path, "x/1.jpg first caption\nx/2.jpg second caption\n")
    with pytest.warns(UserWarning, match=r"no caption path matches.*matched .* by line order"):
        assert read_captions(path, IMAGES, chars=6) == ["first ", "second"]


def test_another_datasets_file_is_refused_naming_both_counts(tmp_path):
    """No path matches and the line count is not the number of training images (another
    dataset's caption file): refused, not matched by line order with lines ignored."""
    path = write(tmp_path, "x/1.jpg first caption\nx/2.jpg second caption\nx/3.jpg third\n")
    with pytest.raises(CaptionError, match=r"captions.txt: no caption path matches.* 3 .*\(2\)"):
        read_captions(path, IMAGES)


def test_a_folder_is_named_as_a_folder(tmp_path):
    with pytest.raises(CaptionError, match=r"is a folder, not a caption file") as error:
        read_captions(tmp_path, IMAGES)
    assert "not found" not in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x/1.jpg only one\n", r"captions.txt: no caption path matches .* its 1 caption lines"),
        ("x/1.jpg one\nx/2.jpg\n", r"captions.txt, line 2: no caption after the image path"),
        (
            "VOCdevkit/VOC2012/JPEGImages/2008_000023.jpg a bottle\nx/2.jpg cars\n",
            r"no caption line for training image 2 \(.*2008_000028.jpg\); 1 of 2 images",
        ),
        ("\n\n", r"captions.txt: the caption file is empty"),
        (
            "2008_000023.jpg one\nJPEGImages/2008_000023.jpg two\n2008_000028.jpg x\n",
            r"captions.txt, lines 1, 2: two captions for training image",
        ),
    ],
)
def test_bad_files_are_one_line(tmp_path, text, message):
    with pytest.raises(CaptionError, match=message) as error:
        read_captions(write(tmp_path, text), IMAGES)
    assert "\n" not in str(error.value)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(CaptionError, match=r"caption file not found: .*nope.txt") as error:
        read_captions(tmp_path / "nope.txt", IMAGES)
    assert "\n" not in str(error.value)
