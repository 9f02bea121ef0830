"""read_image (every mode, first frame, pixel limit, bad files), MultiLabelDataset, DataConfig,
build_splits."""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import bad_inputs
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
        (None, "file not found"),
        (b"", r"empty file \(0 bytes\)"),
        (b"this is not an image at all", r"not an image file \(a text file"),
        (b"\x00\x01\x02\x03binary", r"not an image file \(unrecognised data"),
        (_encoded(fmt="JPEG")[:300], "corrupt JPEG header"),  # cut inside the header
        (_encoded(fmt="JPEG", size=(64, 48))[:1500], "cannot decode JPEG image"),  # truncated
        (_encoded()[:100], "cannot decode PNG image"),  # truncated PNG
        (_encoded(fmt="BMP"), "unsupported image format BMP; convert it to PNG or JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "corrupt PNG header"),
    ],
)
def test_bad_image_errors_name_the_file_and_the_line(tmp_path, data, message):
    images = {"good.png": _encoded()} if data is None else {"good.png": _encoded(), "bad.png": data}
    _split(tmp_path, images, [[1, 0]] * len(images))  # writes the files
    split = MultiLabelSplit(
        [tmp_path / "good.png", tmp_path / "bad.png"],
        np.array([[1, 0], [0, 1]]),
        ["a", "b"],
        "train.csv",
        [2, 5],
    )
    with pytest.raises(BadImageError, match=rf"bad\.png: {message}"):
        read_image(tmp_path / "bad.png")
    dataset = build_dataset(split)
    assert dataset[0][2] == 0
    with pytest.raises(BadImageError, match=rf"bad\.png: {message}.*listed at train\.csv, line 5"):
        dataset[1]


def test_a_bad_image_is_never_replaced_by_another(tmp_path):
    """The old skip mode returned the next good item; now every index is its own row or an
    error, with or without skip_bad_images (bad rows are dropped before the run)."""
    split = _split(
        tmp_path,
        {"0.png": _encoded(), "1.png": b"broken", "2.png": _encoded("L")},
        [[1, 0], [0, 1], [1, 1]],
    )
    for skip in (False, True):
        dataset = build_dataset(split, skip_bad_images=skip)
        assert [dataset[i][2] for i in (0, 2)] == [0, 2]
        with pytest.raises(BadImageError, match=r"1\.png") as err:
            dataset[1]
        assert ("drops bad rows before a run" in str(err.value)) == skip
    loader = DataLoader(build_dataset(split), batch_size=3)
    with pytest.raises(BadImageError, match=r"1\.png"):
        next(iter(loader))


def test_first_frame_of_animations(tmp_path):
    for fmt, suffix in (("GIF", "gif"), ("PNG", "png"), ("WEBP", "webp")):  # GIF, APNG, WebP
        path = bad_inputs.animated(tmp_path / f"anim.{suffix}", fmt)
        with Image.open(path) as image:
            assert getattr(image, "n_frames", 1) == 2, fmt  # really animated
        image = read_image(path)
        assert image.shape == (3, 6, 8) and image.dtype == torch.uint8
        expected = torch.tensor(bad_inputs.RED, dtype=torch.uint8)[:, None, None].expand(3, 6, 8)
        torch.testing.assert_close(image, expected, atol=2, rtol=0)
    split = MultiLabelSplit([tmp_path / "anim.gif"] * 1 + [tmp_path / "anim.webp"],
                            np.array([[1, 0], [0, 1]]), ["a", "b"], "t")  # fmt: skip
    images, _, _ = next(iter(DataLoader(build_dataset(split), batch_size=2)))
    assert images.shape == (2, 3, 6, 8)  # collation works: one frame each


def test_every_pixel_mode_becomes_uint8_rgb(tmp_path):
    cases = {
        "palette": bad_inputs.palette_png(tmp_path / "p.png"),
        "16-bit": bad_inputs.sixteen_bit_png(tmp_path / "g16.png"),
        "grey+alpha": bad_inputs.grey_alpha_png(tmp_path / "la.png"),
    }
    bits = np.array([[0, 1, 1, 0], [1, 0, 0, 1]], dtype=bool)
    Image.fromarray(bits).save(tmp_path / "bits.png")
    cases["1-bit"] = (tmp_path / "bits.png", np.repeat(bits[:, :, None] * 255, 3, 2))
    rgba = np.random.default_rng(4).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    cases["RGBA"] = (tmp_path / "rgba.png", rgba[:, :, :3])
    grey = rgba[:, :, 0]
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    cases["grey"] = (tmp_path / "grey.png", np.repeat(grey[:, :, None], 3, 2))
    for name, (path, expected) in cases.items():
        image = read_image(path)
        assert image.dtype == torch.uint8 and image.shape[0] == 3, name
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected, err_msg=name)
    cmyk = read_image(bad_inputs.cmyk_jpeg(tmp_path / "cmyk.jpg"))
    assert cmyk.shape == (3, 6, 8)
    assert (cmyk[0] >= 250).all() and (cmyk[1:] <= 5).all()  # (0, 255, 255, 0) CMYK is red


def test_pixel_limit_is_applied_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = bad_inputs.huge_png(tmp_path / "huge.png")
    assert path.stat().st_size < 100_000  # a small file that would decode to 1.2 GB

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    with pytest.raises(BadImageError, match=r"huge\.png: 400,000,000 pixels is above the limit "
                       r"of 89,478,485; shrink the image or raise data\.max_image_pixels"):  # fmt: skip
        read_image(path)
    small = tmp_path / "small.png"
    small.write_bytes(_encoded(size=(20, 12)))
    with pytest.raises(
        BadImageError, match=r"240 pixels is above the limit of 239 \(20 x 12\); shrink"
    ):
        read_image(small, max_pixels=239)
    split = MultiLabelSplit([small], np.array([[1, 0]]), ["a", "b"], "t")
    with pytest.raises(BadImageError, match="above the limit of 100"):
        build_dataset(split, max_pixels=100)[0]
    monkeypatch.undo()
    assert read_image(small, max_pixels=240).shape == (3, 12, 20)


def test_non_utf8_file_name_is_read(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")  # latin-1 bytes: not UTF-8
    (tmp_path / name).write_bytes(_encoded())
    assert read_image(tmp_path / name).shape == (3, 12, 20)
    (tmp_path / name).write_bytes(b"junk")
    with pytest.raises(BadImageError) as err:
        read_image(tmp_path / name)
    assert r"caf\xe9.png: not an image file" in str(err.value)
    str(err.value).encode("utf-8")  # printable: no lone surrogates


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
    with pytest.raises(ValueError, match=r"bad value 'imagenet' for 'data\.name'; allowed values"):
        DataConfig(name="imagenet")
    with pytest.raises(ValueError, match="tail_threshold"):
        DataConfig(head_threshold=10, tail_threshold=20)
    with pytest.raises(ValueError, match=r"unknown config key 'data\.unknown_key'"):
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


def test_a_limit_above_pillows_own_is_honoured(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from mlcnc.data.dataset import probe_image

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", PILImage.MAX_IMAGE_PIXELS)  # restored after
    path = bad_inputs.huge_png(tmp_path / "huge.png")  # 400 M pixels: Pillow refuses > 179 M
    info = probe_image(path, max_pixels=400_000_000)
    assert (info.format, info.width, info.height, info.mode) == ("PNG", 20000, 20000, "1")
    assert probe_image(path, max_pixels=None).width == 20000
    with pytest.raises(BadImageError, match="above the limit of 399,999,999"):
        probe_image(path, max_pixels=399_999_999)
