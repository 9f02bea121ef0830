"""VOC-LT / COCO-LT: split-file download, verification and cache; and, on annotation trees
written from reference_stats.json, the loaders reproduce gt_labels row for row, class_freq
and the official class split."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from mlcnc.data import DataConfig, build_splits
from mlcnc.data.benchmarks import (
    RAW_URL,
    SPLIT_FILES,
    ChecksumError,
    SplitFileUnavailable,
    build_coco_lt,
    build_voc_lt,
    cached_split_path,
    fetch_split_file,
    read_split_ids,
)
from mlcnc.data.longtail import class_groups
from mlcnc.data.readers import VOC_CLASSES, DataError

SRC = Path(__file__).resolve().parents[2] / "src" / "mlcnc"
LOCAL_COPY = {"voc_lt": "voc_lt/img_id.txt", "coco_lt": "coco_lt/img_id.pkl"}
# COCO 2017's 80 category ids (1..90 with gaps), the column order of COCO-LT.
COCO_CATEGORY_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90,
]  # fmt: skip


@pytest.fixture
def mlcnc_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MLCNC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("network disabled in tests")


# --------------------------------------------------------------- download + cache


@pytest.mark.parametrize("benchmark", ["voc_lt", "coco_lt"])
def test_download_verifies_caches_and_then_stays_offline(
    benchmark, shared_benchmarks, mlcnc_home, monkeypatch
):
    local = shared_benchmarks / LOCAL_COPY[benchmark]
    path = fetch_split_file(benchmark, url=local.as_uri())
    assert path == mlcnc_home / "benchmarks" / benchmark / SPLIT_FILES[benchmark].filename
    assert path == cached_split_path(benchmark)
    assert path.read_bytes() == local.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    assert fetch_split_file(benchmark) == path  # cached: no download attempted


def test_download_with_wrong_digest_caches_nothing(tmp_path, mlcnc_home):
    fake = tmp_path / "img_id.txt"
    fake.write_text("2008_000001\n")
    with pytest.raises(ChecksumError, match=r"img_id\.txt downloaded from file:.*does not match"):
        fetch_split_file("voc_lt", url=fake.as_uri())
    folder = cached_split_path("voc_lt").parent
    assert not folder.exists() or list(folder.iterdir()) == []


def test_offline_error_says_what_to_fetch_and_where(mlcnc_home, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    with pytest.raises(SplitFileUnavailable) as info:
        fetch_split_file("coco_lt")
    message = str(info.value)
    spec = SPLIT_FILES["coco_lt"]
    assert spec.url == RAW_URL.format(path="appendix/coco/longtail2017/img_id.pkl")
    assert spec.url in message
    assert str(cached_split_path("coco_lt")) in message
    assert spec.sha256 in message and "img_id.pkl" in message
    assert not cached_split_path("coco_lt").exists()


def test_corrupted_cache_and_local_file_are_checksum_errors(
    shared_benchmarks, mlcnc_home, tmp_path
):
    cached = cached_split_path("voc_lt")
    cached.parent.mkdir(parents=True)
    cached.write_text("tampered\n")
    with pytest.raises(ChecksumError, match=str(cached)):
        fetch_split_file("voc_lt")
    with pytest.raises(ChecksumError, match=r"img_id\.pkl: SHA-256"):
        fetch_split_file("voc_lt", shared_benchmarks / LOCAL_COPY["coco_lt"])
    assert fetch_split_file("voc_lt", shared_benchmarks / LOCAL_COPY["voc_lt"]) == (
        shared_benchmarks / LOCAL_COPY["voc_lt"]
    )
    with pytest.raises(DataError, match="split file not found"):
        fetch_split_file("voc_lt", tmp_path / "none.txt")
    with pytest.raises(ValueError, match="unknown benchmark 'vg'"):
        fetch_split_file("vg")


def test_split_files_are_plain_text_ids(shared_benchmarks):
    voc = read_split_ids("voc_lt", shared_benchmarks / LOCAL_COPY["voc_lt"])
    coco = read_split_ids("coco_lt", shared_benchmarks / LOCAL_COPY["coco_lt"])
    assert len(voc) == 1142 and voc[0] == "2008_000023" and len(set(voc)) == 1142
    assert len(coco) == 1909 and all(i.isdigit() for i in coco) and len(set(coco)) == 1909
    assert not (shared_benchmarks / LOCAL_COPY["coco_lt"]).read_bytes().startswith(b"\x80")


def test_raw_host_appears_only_in_the_url_constant():
    hits = [
        (path.relative_to(SRC), line)
        for path in SRC.rglob("*.py")
        for line in path.read_text().splitlines()
        if "raw.githubusercontent" in line
    ]
    assert hits == [(Path("data/benchmarks.py"), f'RAW_URL = "{RAW_URL}"')]


# ------------------------------------------- loaders reproduce the reference labels


def _reference(shared_benchmarks: Path, benchmark: str) -> tuple[dict, np.ndarray]:
    stats = json.loads((shared_benchmarks / benchmark / "reference_stats.json").read_text())
    gt = np.array([[int(ch) for ch in row] for row in stats["gt_labels"]], dtype=np.uint8)
    return stats, gt


def _check_against_reference(split, stats: dict, gt: np.ndarray) -> None:
    np.testing.assert_array_equal(split.labels, gt)  # row for row, in split-file order
    np.testing.assert_array_equal(split.class_freq, stats["class_freq"])
    np.testing.assert_array_equal(split.neg_class_freq, stats["neg_class_freq"])
    groups = class_groups(split.class_freq)  # thresholds 100 / 20
    official = stats["class_split"]
    for ours, theirs in (("head", "head"), ("medium", "middle"), ("tail", "tail")):
        assert groups[ours].tolist() == sorted(official[theirs]), ours


def _voc_object(name: str, difficult: int) -> str:
    return f"<object><name>{name}</name><difficult>{difficult}</difficult></object>"


def _write_voc(
    root: Path, rows: dict[str, list[tuple[str, int]]], image_set: str | None = None
) -> None:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in rows.items():
        body = "".join(_voc_object(n, d) for n, d in objects)
        (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{body}</annotation>")
        (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(b"")
    if image_set:
        (root / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def voc_trees(shared_benchmarks, tmp_path_factory):
    """VOC2012 annotations for the 1,142 VOC-LT ids built from gt_labels (one object per
    positive class; some only 'difficult'; some classes twice) plus unlisted images, and
    a small VOC2007 test set."""
    base = tmp_path_factory.mktemp("voc")
    stats, gt = _reference(shared_benchmarks, "voc_lt")
    ids = read_split_ids("voc_lt", shared_benchmarks / LOCAL_COPY["voc_lt"])
    rows = {}
    for r, image_id in enumerate(ids):
        objects = []
        for c in np.flatnonzero(gt[r]):
            objects.append((VOC_CLASSES[c], int((r + c) % 5 == 0)))  # difficult-only positives
            if r % 7 == 0:
                objects.append((VOC_CLASSES[c], 1))
        rows[image_id] = objects
    rows["2012_999999"] = [("cow", 0)]  # not in VOC-LT: must not be read
    _write_voc(base / "VOC2012", rows, image_set="trainval")
    test_rows = {"000001": [("dog", 0)], "000002": [("cat", 1), ("person", 0)], "000003": []}
    _write_voc(base / "VOC2007", test_rows, image_set="test")
    return base, stats, gt


def test_voc_lt_reproduces_reference(voc_trees, shared_benchmarks):
    base, stats, gt = voc_trees
    splits = build_voc_lt(
        base / "VOC2012", base / "VOC2007", shared_benchmarks / LOCAL_COPY["voc_lt"]
    )
    train, test = splits["train"], splits["test"]
    assert len(train) == 1142
    assert train.image_paths[0] == base / "VOC2012" / "JPEGImages" / "2008_000023.jpg"
    split_file = shared_benchmarks / LOCAL_COPY["voc_lt"]
    assert train.source == str(split_file) and train.lines == list(range(1, 1143))
    assert train.where(4) == f"{split_file}, line 5"
    assert test.where(1).endswith("ImageSets/Main/test.txt, line 2")
    _check_against_reference(train, stats, gt)
    assert [len(v) for v in class_groups(train.class_freq).values()] == [6, 6, 8]
    assert [p.stem for p in test.image_paths] == ["000001", "000002", "000003"]
    expected = np.zeros((3, 20), dtype=np.uint8)
    expected[0, VOC_CLASSES.index("dog")] = 1
    expected[1, [VOC_CLASSES.index("cat"), VOC_CLASSES.index("person")]] = 1
    np.testing.assert_array_equal(test.labels, expected)


def test_voc_lt_through_data_config(voc_trees, shared_benchmarks, mlcnc_home):
    base, _, gt = voc_trees
    cfg = DataConfig(
        name="voc_lt",
        voc2012_root=str(base / "VOC2012"),
        voc2007_root=str(base / "VOC2007"),
        voc_lt_split_file=str(shared_benchmarks / LOCAL_COPY["voc_lt"]),
    )
    splits = build_splits(cfg)
    assert set(splits) == {"train", "test"}
    np.testing.assert_array_equal(splits["train"].labels, gt)
    with pytest.raises(ValueError, match=r"needs data\.voc2007_root"):
        build_splits(DataConfig(name="voc_lt", voc2012_root=str(base)))


def _coco_json(path: Path, images: list[int], annotations: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "images": [
            {"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in images
        ],
        "annotations": [{"id": k + 1, **a} for k, a in enumerate(annotations)],
        "categories": [{"id": cid, "name": f"category{cid}"} for cid in COCO_CATEGORY_IDS],
    }
    path.write_text(json.dumps(data))


def _box(image_id: int, column: int, *, crowd: int = 0, w: float = 20.0, h: float = 10.0) -> dict:
    return {
        "image_id": image_id,
        "category_id": COCO_CATEGORY_IDS[column],
        "iscrowd": crowd,
        "bbox": [3.0, 4.0, w, h],
        "area": w * h,
    }


@pytest.fixture(scope="module")
def coco_tree(shared_benchmarks, tmp_path_factory):
    """COCO2017 annotations for the 1,909 COCO-LT ids built from gt_labels (one box per
    positive; crowd and degenerate boxes only on negative classes), unlisted train images,
    and a val set with images that have no annotation."""
    root = tmp_path_factory.mktemp("coco")
    stats, gt = _reference(shared_benchmarks, "coco_lt")
    ids = [int(i) for i in read_split_ids("coco_lt", shared_benchmarks / LOCAL_COPY["coco_lt"])]
    annotations = []
    for r, image_id in enumerate(ids):
        annotations += [_box(image_id, int(c)) for c in np.flatnonzero(gt[r])]
        negatives = np.flatnonzero(gt[r] == 0)
        annotations.append(_box(image_id, int(negatives[r % len(negatives)]), crowd=1))
        annotations.append(_box(image_id, int(negatives[(3 * r) % len(negatives)]), w=0.5))
    extra = max(ids) + 1
    annotations.append(_box(extra, 0))
    train_images = sorted([*ids, extra])
    _coco_json(root / "annotations" / "instances_train2017.json", train_images, annotations)
    val_images = [139, 285, 632, 724, 776]
    val_annotations = [_box(139, 0), _box(139, 2), _box(285, 79), _box(632, 5, crowd=1)]
    _coco_json(root / "annotations" / "instances_val2017.json", val_images, val_annotations)
    for folder, images in (("train2017", train_images), ("val2017", val_images)):
        (root / folder).mkdir()
        for image_id in images:
            (root / folder / f"{image_id:012d}.jpg").write_bytes(b"")
    return root, stats, gt, ids


def test_coco_lt_reproduces_reference(coco_tree, shared_benchmarks):
    root, stats, gt, ids = coco_tree
    splits = build_coco_lt(root, shared_benchmarks / LOCAL_COPY["coco_lt"])
    train, test = splits["train"], splits["test"]
    assert [int(p.stem) for p in train.image_paths] == ids
    assert train.source.endswith("img_id.pkl") and train.lines[-1] == 1909
    assert test.where(0).endswith("instances_val2017.json, image id 139")
    assert len(train.class_names) == 80 and train.class_names[0] == "category1"
    _check_against_reference(train, stats, gt)
    assert [len(v) for v in class_groups(train.class_freq).values()] == [22, 33, 25]
    # Test: every val image, annotated or not (the DB protocol's 5,000 of 5,000).
    assert [int(p.stem) for p in test.image_paths] == [139, 285, 632, 724, 776]
    expected = np.zeros((5, 80), dtype=np.uint8)
    expected[0, [0, 2]] = 1
    expected[1, 79] = 1
    np.testing.assert_array_equal(test.labels, expected)


def test_coco_lt_through_data_config(coco_tree, shared_benchmarks):
    root, _, gt, _ = coco_tree
    cfg = DataConfig(
        name="coco_lt",
        coco_root=str(root),
        coco_lt_split_file=str(shared_benchmarks / LOCAL_COPY["coco_lt"]),
    )
    np.testing.assert_array_equal(build_splits(cfg)["train"].labels, gt)
