"""MultiLabelDataset (decoding, bad-image errors and skipping), DataConfig, build_splits."""

from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mlcnc.data import (
    BadImageError,
    DataConfig,
    MultiLabelSplit,
    build_dataset,
    build_splits,
    read_csv_split,
    read_image,
)
from mlcnc.data.transforms import build_transforms


def _split(folder: Path, images: dict[str, bytes], labels: list[list[int]]) -> MultiLabelSplit:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (folder / name).write_bytes(data)
    return MultiLabelSplit([folder / n for n in images], np.array(labels), ["a", "b"], "test")


def _encoded(mode: str = "RGB", fmt: str = "PNG", size: tuple[int, int] = (20, 12)) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_items_from_tiny_dataset_and_loader(tiny_csv_dataset):
    split = read_csv_split(tiny_csv_dataset / "train.csv")
    dataset = build_dataset(split, build_transforms("paper", 24, train=False))
    assert len(dataset) == len(split) == 25
    image, target, index = dataset[14]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert target.dtype == torch.float32 and target.shape == (4,)
    torch.testing.assert_close(target, torch.from_numpy(split.labels[14]).float())
    assert index == 14
    images, targets, indices = next(iter(DataLoader(dataset, batch_size=5)))
    assert images.shape == (5, 3, 24, 24) and targets.shape == (5, 4)
    assert indices.tolist() == [0, 1, 2, 3, 4]


def test_decoding_modes_and_formats(tmp_path):
    raw = np.asarray(Image.open(io.BytesIO(_encoded())))
    split = _split(
        tmp_path,
        {
            "rgb.png": _encoded(),
            "grey.png": _encoded("L"),
            "alpha.png": _encoded("RGBA"),
            "photo.jpg": _encoded(fmt="JPEG"),
        },
        [[1, 0], [0, 1], [1, 1], [0, 0]],
    )
    dataset = build_dataset(split, transform=None)
    first, _, _ = dataset[0]
    torch.testing.assert_close(first, torch.from_numpy(raw.copy()).permute(2, 0, 1).float() / 255)
    for i in range(4):
        image, _, _ = dataset[i]
        assert image.shape == (3, 12, 20) and image.min() >= 0 and image.max() <= 1
    assert read_image(split.image_paths[1]).dtype == torch.uint8


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "cannot read image file"),
        (b"", "image file is empty"),
        (b"this is not an image at all", "cannot decode image"),
        (_encoded(fmt="JPEG")[:300], "cannot decode image"),  # truncated JPEG
        (_encoded()[:100], "cannot decode image"),  # truncated PNG
    ],
)
def test_bad_image_errors_name_the_file(tmp_path, data, message):
    images = {"good.png": _encoded()} if data is None else {"good.png": _encoded(), "bad.png": data}
    split = _split(tmp_path, images, [[1, 0]] * len(images))
    if data is None:  # missing file: listed but not on disk
        split = MultiLabelSplit(
            [*split.image_paths, tmp_path / "bad.png"], np.array([[1, 0], [0, 1]]), ["a", "b"], "t"
        )
    dataset = build_dataset(split)
    with pytest.raises(BadImageError, match=rf"bad\.png: {message}"):
        dataset[1]


def test_skip_bad_images_substitutes_next_good_item_and_counts(tmp_path, caplog):
    split = _split(
        tmp_path,
        {"0.png": _encoded(), "1.png": b"broken", "2.png": b"", "3.png": _encoded("L")},
        [[1, 0], [0, 1], [1, 1], [0, 1]],
    )
    dataset = build_dataset(split, skip_bad_images=True)
    with caplog.at_level(logging.WARNING, logger="mlcnc.data.dataset"):
        image, target, index = dataset[1]
    assert index == 3  # 1 and 2 are bad: the next good item, with its own target
    torch.testing.assert_close(target, torch.tensor([0.0, 1.0]))
    assert image.shape == (3, 12, 20)
    assert dataset.num_skipped == 2
    assert "1.png" in caplog.text and "2.png" in caplog.text
    dataset[2]
    assert dataset.num_skipped == 2  # counted once per file
    assert dataset[0][2] == 0
    all_bad = build_dataset(_split(tmp_path / "x", {"a.png": b"x"}, [[1, 0]]), skip_bad_images=True)
    with pytest.raises(BadImageError, match="no readable image"):
        all_bad[0]


def test_data_config_fields_defaults_and_validation():
    names = [f.name for f in dataclasses.fields(DataConfig)]
    for field in ("name", "voc2012_root", "voc2007_root", "coco_root", "train_csv", "val_csv",
                  "test_csv", "image_size", "num_workers", "num_samples_cls", "epoch_length",
                  "skip_bad_images", "head_threshold", "tail_threshold"):  # fmt: skip
        assert field in names
    cfg = DataConfig()
    assert (cfg.name, cfg.image_size, cfg.num_samples_cls, cfg.epoch_length) == (
        "synthetic",
        224,
        1,
        None,
    )
    assert (cfg.head_threshold, cfg.tail_threshold, cfg.skip_bad_images) == (100, 20, False)
    with pytest.raises(ValueError, match="bad value 'imagenet' for 'data.name'; allowed values"):
        DataConfig(name="imagenet")
    with pytest.raises(ValueError, match="tail_threshold"):
        DataConfig(head_threshold=10, tail_threshold=20)
    with pytest.raises(ValueError, match="unknown config key 'data.unknown_key'"):
        DataConfig(unknown_key=1)


def test_build_splits_csv_shares_training_classes(tiny_csv_dataset):
    cfg = DataConfig(
        name="csv",
        train_csv=str(tiny_csv_dataset / "train.csv"),
        val_csv=str(tiny_csv_dataset / "val.csv"),
        test_csv=str(tiny_csv_dataset / "test.csv"),
    )
    splits = build_splits(cfg)
    assert list(splits) == ["train", "val", "test"]
    assert [len(s) for s in splits.values()] == [25, 8, 8]
    assert all(s.class_names == ["circle", "square", "triangle", "star"] for s in splits.values())
    np.testing.assert_array_equal(splits["train"].class_freq, [17, 8, 4, 2])
    no_val = build_splits(dataclasses.replace(cfg, val_csv=None))
    assert list(no_val) == ["train", "test"]
    with pytest.raises(ValueError, match=r"needs data\.train_csv"):
        build_splits(DataConfig(name="csv", test_csv="t.csv"))


def test_build_splits_synthetic_reads_the_benchmark_folder(tiny_csv_dataset, monkeypatch, tmp_path):
    calls = []

    def fake_ensure(root=None):
        calls.append(root)
        return tiny_csv_dataset

    monkeypatch.setattr("mlcnc.data.synthetic.ensure_synthetic_benchmark", fake_ensure)
    splits = build_splits(DataConfig(name="synthetic"))
    assert list(splits) == ["train", "val", "test"] and len(splits["val"]) == 8
    build_splits(DataConfig(name="synthetic", synthetic_root=str(tmp_path)))
    assert calls == [None, tmp_path]
