"""Reduced-size JPEG decoding (mlcnc.data.fast_decode) against read_image and PIL itself."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mlcnc.data import BadImageError, read_image
from mlcnc.data.fast_decode import draft_scale, read_image_reduced, reduced_size
from mlcnc.data.transforms import build_transforms


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus mild noise: JPEG-friendly, like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [128 + 100 * np.sin(x / 23 + c) * np.cos(y / 17 - c) for c in range(3)], axis=-1
    )
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def _jpeg(path: Path, width: int, height: int, mode: str = "RGB") -> Path:
    image = Image.fromarray(_photo(width, height))
    image.convert(mode).save(path, quality=90)
    return path


@pytest.mark.parametrize(
    ("width", "height", "min_side"),
    [(500, 375, 224), (500, 375, 128), (500, 375, 112), (640, 480, 224), (640, 427, 224),
     (1024, 768, 112), (100, 80, 224), (333, 500, 64), (17, 9, 2)],
)  # fmt: skip
def test_draft_scale_and_size_are_what_pil_decodes(
    tmp_path: Path, width: int, height: int, min_side: int
) -> None:
    path = _jpeg(tmp_path / "a.jpg", width, height)
    scale = draft_scale(width, height, min_side)
    expected = reduced_size(width, height, scale)
    assert scale in (1, 2, 4, 8)
    assert min(expected) >= min(min_side, width, height)  # never below the request
    if scale < 8:  # the next scale would go below the request (or beyond libjpeg's 1/8)
        w2, h2 = width // (2 * scale), height // (2 * scale)
        assert min(w2, h2) < min_side
    image = read_image_reduced(path, min_side)
    assert tuple(image.shape) == (3, expected[1], expected[0])
    with Image.open(path) as pil:
        pil.draft("RGB", (min_side, min_side))
        assert pil.convert("RGB").size == expected


def test_full_size_decode_matches_read_image(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "a.jpg", 500, 375)
    ours, reference = read_image_reduced(path, None), read_image(path)
    assert ours.dtype == reference.dtype == torch.uint8
    assert ours.shape == reference.shape == (3, 375, 500)
    assert ours.is_contiguous()
    difference = (ours.int() - reference.int()).abs()
    assert difference.max() <= 2 and difference.float().mean() < 0.1


def test_no_reduction_when_the_image_is_small(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "a.jpg", 300, 200)
    assert read_image_reduced(path, 224).shape == read_image(path).shape == (3, 200, 300)


def test_reduced_decode_is_close_to_a_downsampled_full_decode(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "a.jpg", 512, 384)
    reduced = read_image_reduced(path, 96)  # 1/4: 128 x 96
    assert reduced.shape == (3, 96, 128) and reduced.dtype == torch.uint8
    full = read_image(path).float().unsqueeze(0)
    area = F.avg_pool2d(full, kernel_size=4).squeeze(0)  # the 4x4 block means
    difference = (reduced.float() - area).abs()
    assert difference.mean() < 2.0, difference.mean()
    assert difference.quantile(0.99) < 8.0


def test_training_transform_output_is_unchanged_in_size_and_dtype(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "a.jpg", 500, 375)
    transform = build_transforms("paper", 112, train=True)
    torch.manual_seed(0)
    a = transform(read_image(path))
    torch.manual_seed(0)
    b = transform(read_image_reduced(path, 112))
    assert a.shape == b.shape == (3, 112, 112)
    assert a.dtype == b.dtype == torch.float32


@pytest.mark.parametrize(("mode", "fmt"), [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"),
                                           ("P", "PNG"), ("L", "PNG")])  # fmt: skip
def test_other_modes_become_rgb(tmp_path: Path, mode: str, fmt: str) -> None:
    path = tmp_path / f"a.{fmt.lower()}"
    Image.fromarray(_photo(64, 48)).convert(mode).save(path, fmt)
    image = read_image_reduced(path, 16)
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    expected = (24, 32) if fmt == "JPEG" else (48, 64)  # PNG is never reduced
    assert tuple(image.shape[1:]) == expected


def test_bad_files_raise_bad_image_error_naming_the_file(tmp_path: Path) -> None:
    good = io.BytesIO()
    Image.fromarray(_photo(64, 48)).save(good, "JPEG")
    cases = {
        "missing.jpg": None,
        "empty.jpg": b"",
        "truncated.jpg": good.getvalue()[:300],
        "garbage.jpg": b"not an image at all" * 10,
    }
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(BadImageError, match=name):
            read_image_reduced(path, 16)


def test_draft_scale_refuses_non_positive_sizes() -> None:
    with pytest.raises(ValueError):
        draft_scale(0, 10, 5)
    with pytest.raises(ValueError):
        draft_scale(10, 10, 0)
