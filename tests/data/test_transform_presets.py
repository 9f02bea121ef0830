"""Transform presets of the published recipes (ML-GCN, ASL): config keys, the crop and
cutout rules, square evaluation, what predict / export read, and one run that uses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from helpers import write_tiny_csv_dataset
from mlcnc.analysis.export import export_metadata
from mlcnc.analysis.preprocessing import preprocessing_of
from mlcnc.config import ConfigError, load_config
from mlcnc.data import transforms as data_transforms
from mlcnc.data.transforms import (
    RANDAUGMENT_OPS,
    Cutout,
    MultiScaleCrop,
    UDARandAugment,
    build_transforms,
    transforms_for,
)

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# ML-GCN's fill_fix_offset with more_fix_crop, in units of the grid step (x, y)
ML_GCN_GRID = [
    (0, 0), (4, 0), (0, 4), (4, 4), (2, 2),
    (0, 2), (4, 2), (2, 4), (2, 0),
    (1, 1), (3, 1), (1, 3), (3, 3),
]  # fmt: skip


def _image(h: int = 90, w: int = 130, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)


# --------------------------------------------------------------------------------------
# defaults unchanged


def _todays_pipeline(train: bool, size: int) -> v2.Compose:
    """The pipeline as it was before the presets, written out step by step."""
    if train:
        steps = [
            v2.RandomResizedCrop(size, antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
        ]
    else:
        steps = [v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size)]
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(*IMAGENET)]
    return v2.Compose([v2.ToImage(), *steps, *to_float, v2.ToPureTensor()])


@pytest.mark.parametrize("train", [True, False])
def test_default_presets_give_the_same_pixels_as_before(train: bool) -> None:
    image = _image()
    cfg = load_config("synthetic", ["data.image_size=48"])
    new = [build_transforms("paper", 48, train), transforms_for(cfg.data, cfg.method.recipe, train)]
    for transform in new:
        for seed in (0, 1, 2):
            torch.manual_seed(seed)
            expected = _todays_pipeline(train, 48)(image)
            torch.manual_seed(seed)
            assert torch.equal(transform(image), expected)


def test_transforms_for_reads_augment_and_deterministic() -> None:
    image = _image()
    no_augment = load_config("synthetic", ["data.augment=false", "data.image_size=40"])
    assert torch.equal(
        transforms_for(no_augment.data, "paper", train=True)(image),
        transforms_for(no_augment.data, "paper", False)(image),
    )
    flipping = load_config("synthetic", ["data.eval_flip=true", "data.image_size=40"])
    names = [type(s).__name__ for s in transforms_for(flipping.data, "paper", False).transforms]
    assert "RandomHorizontalFlip" in names
    steps = transforms_for(flipping.data, "paper", False, deterministic=True).transforms
    assert not any(isinstance(s, v2.RandomHorizontalFlip) for s in steps)


# --------------------------------------------------------------------------------------
# ML-GCN's multi-scale crop


def _allowed_crops(height: int, width: int, size: int) -> set[tuple[int, int, int, int]]:
    """ML-GCN's rule, written plainly: every (w, h, x, y) the crop may choose."""
    base = min(height, width)
    sides = []
    for scale in (1.0, 0.875, 0.75, 0.66, 0.5):
        side = int(base * scale)
        if abs(side - size) < 3:
            side = size
        sides.append(side)
    allowed = set()
    for i, crop_h in enumerate(sides):
        for j, crop_w in enumerate(sides):
            if abs(i - j) > 2:
                continue
            step_x, step_y = (width - crop_w) // 4, (height - crop_h) // 4
            for grid_x, grid_y in ML_GCN_GRID:
                allowed.add((crop_w, crop_h, grid_x * step_x, grid_y * step_y))
    return allowed


def test_multiscale_crop_draws_only_and_all_of_ml_gcns_crops() -> None:
    height, width, size = 100, 140, 64  # sides 100, 87, 75, 66 -> 64 (snapped), 50
    crop = MultiScaleCrop(size, generator=torch.Generator().manual_seed(0))
    allowed = _allowed_crops(height, width, size)
    assert len(crop.crop_sizes(height, width)) == 19  # 25 pairs less 6 with |i - j| > 2
    assert {w for w, _ in crop.crop_sizes(height, width)} == {100, 87, 75, 64, 50}
    drawn = {crop.sample(height, width) for _ in range(6000)}
    assert drawn == allowed
    # the 13 places of the smallest crop are distinct, and all of them occur
    smallest = {(x, y) for w, h, x, y in drawn if (w, h) == (50, 50)}
    assert len(smallest) == 13


def test_multiscale_crop_resizes_the_sampled_box() -> None:
    image = _image(100, 140)
    out = MultiScaleCrop(64, generator=torch.Generator().manual_seed(5))(image)
    w, h, x, y = MultiScaleCrop(64, generator=torch.Generator().manual_seed(5)).sample(100, 140)
    assert out.shape == (3, 64, 64) and out.dtype == torch.uint8
    assert torch.equal(out, F.resized_crop(image, y, x, h, w, [64, 64], antialias=True))
    transform = build_transforms("paper", 64, True, train_transform="multiscale_crop_flip")
    names = [type(s).__name__ for s in transform.transforms]
    assert names[1:3] == ["MultiScaleCrop", "RandomHorizontalFlip"]
    assert transform(image).shape == (3, 64, 64)


# --------------------------------------------------------------------------------------
# ASL's cutout


def _asl_pil_box(side: int, centre_y: int, centre_x: int, factor: float) -> np.ndarray:
    """The pixels ASL's CutoutPIL paints on a square image for a given centre: PIL's
    rectangle from c - half to c + half (ends clipped to [0, side]), end corner included."""
    half = int(factor * side + 0.5) // 2
    y1, y2 = np.clip([centre_y - half, centre_y + half], 0, side)
    x1, x2 = np.clip([centre_x - half, centre_x + half], 0, side)
    canvas = Image.new("L", (side, side), 0)
    ImageDraw.Draw(canvas).rectangle([int(x1), int(y1), int(x2), int(y2)], fill=255)
    return np.asarray(canvas) > 0


@pytest.mark.parametrize("centre", [(16, 16), (0, 0), (31, 31), (3, 28), (20, 9)])
def test_cutout_box_matches_pils_inclusive_rectangle(centre: tuple[int, int]) -> None:
    top, left, bottom, right = Cutout(0.5).box(32, 32, *centre)
    ours = np.zeros((32, 32), dtype=bool)
    ours[top:bottom, left:right] = True
    np.testing.assert_array_equal(ours, _asl_pil_box(32, *centre, 0.5))
    assert Cutout(0.5).box(32, 32, 16, 16) == (8, 8, 25, 25)  # 2 * 8 + 1 = 17 px


def test_cutout_paints_one_clipped_box_of_one_colour() -> None:
    height, width = 30, 44  # half extents 15 // 2 = 7 rows, 22 // 2 = 11 columns
    cutout = Cutout(0.5, generator=torch.Generator().manual_seed(0))
    image = _image(height, width, seed=1)
    clipped = full = 0
    for _ in range(200):
        out = cutout(image)
        changed = (out != image).any(dim=0)
        rows, cols = changed.any(dim=1).nonzero()[:, 0], changed.any(dim=0).nonzero()[:, 0]
        top, bottom = int(rows.min()), int(rows.max()) + 1
        left, right = int(cols.min()), int(cols.max()) + 1
        box = out[:, top:bottom, left:right]
        colour = box[:, :1, :1]
        assert torch.equal(box, colour.expand_as(box))  # one colour, a full rectangle
        outside = torch.ones(height, width, dtype=torch.bool)
        outside[top:bottom, left:right] = False
        assert torch.equal(out[:, outside], image[:, outside])
        extent = (bottom - top, right - left)
        at_border = top == 0 or left == 0 or bottom == height or right == width
        assert extent[0] <= 15 and extent[1] <= 23
        if at_border:
            clipped += 1
        else:
            assert extent == (15, 23)
            full += 1
    assert clipped > 10 and full > 10


def test_cutout_randaugment_pipeline_shape_and_range() -> None:
    transform = build_transforms(
        "paper", 40, True, train_transform="cutout_randaugment", normalize=False
    )
    names = [type(s).__name__ for s in transform.transforms]
    assert names[1:4] == ["Resize", "Cutout", "UDARandAugment"]
    assert list(transform.transforms[1].size) == [40, 40]
    torch.manual_seed(0)
    for seed in range(20):
        out = transform(_image(60, 90, seed))
        assert out.shape == (3, 40, 40) and out.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("name", RANDAUGMENT_OPS)
def test_every_randaugment_operation_keeps_shape_and_dtype(name: str) -> None:
    augment = UDARandAugment(generator=torch.Generator().manual_seed(0))
    image = _image(36, 48)
    for level in (1, 5, 9):
        out = augment.apply(image, name, level)
        assert out.shape == image.shape and out.dtype == torch.uint8


# --------------------------------------------------------------------------------------
# square evaluation and what predict / export read


def test_resize_square_keeps_the_whole_image() -> None:
    image = torch.zeros(3, 40, 80, dtype=torch.uint8)
    image[:, :, :8] = 255  # a stripe along the left edge
    square = build_transforms("paper", 32, False, eval_transform="resize_square", normalize=False)
    out = square(image)
    assert out.shape == (3, 32, 32)
    assert float(out[:, :, 0].min()) == 1.0  # the stripe survives
    expected = F.resize(image, [32, 32], antialias=True).float() / 255
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    cropped = build_transforms("paper", 32, False, normalize=False)(image)
    assert float(cropped[:, :, 0].max()) == 0.0  # the center crop cuts it off


def test_preprocessing_describes_square_resize_and_identity_normalisation() -> None:
    transform = build_transforms(
        "paper", 48, False, eval_transform="resize_square", normalize=False
    )
    pre = preprocessing_of(transform, 48)
    assert pre.crop is False and (pre.image_size, pre.resize_size) == (48, 48)
    assert pre.mean == (0.0, 0.0, 0.0) and pre.std == (1.0, 1.0, 1.0)
    images = torch.rand(2, 3, 8, 8)
    restored = pre.denormalize(images)
    assert restored.dtype == torch.uint8 and (restored.float() - images * 255).abs().max() <= 0.51
    meta = export_metadata(["a"], pre)
    assert "resized to 48 x 48 (aspect not kept, not cropped)" in meta["input"]
    assert '"crop": false' in meta["preprocessing"]
    default = preprocessing_of(build_transforms("paper", 48, False), 48)
    assert default.crop is True and default.resize_size == 55
    assert "center-cropped" in export_metadata(["a"], default)["input"]


# --------------------------------------------------------------------------------------
# config keys


def test_config_keys_load_and_typos_are_refused() -> None:
    cfg = load_config("synthetic", ["data.train_transform=multiscale_crop_flip"])
    assert cfg.data.train_transform == "multiscale_crop_flip"
    assert (cfg.data.eval_transform, cfg.data.normalize) == ("resize_center_crop", True)
    for override, key in (
        ("data.train_transform=multiscale_crop", "data.train_transform"),
        ("data.eval_transform=square", "data.eval_transform"),
        ("data.normalise=false", "data.normalise"),
    ):
        with pytest.raises(ConfigError) as error:
            load_config("synthetic", [override])
        message = str(error.value)
        assert key in message and "\n" not in message
    with pytest.raises(ValueError, match="unknown eval_transform 'warp'"):
        build_transforms("paper", 32, False, eval_transform="warp")


# --------------------------------------------------------------------------------------
# one short run


def test_a_run_uses_its_presets_and_load_trained_reproduces_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import helpers

    helpers.register_tiny_method()
    from mlcnc.engine import evaluate_checkpoint, load_trained, train

    torch.set_num_threads(1)
    built: list[tuple[bool, object]] = []
    real = data_transforms.transforms_for

    def recording(data, recipe, train, **kwargs):
        transform = real(data, recipe, train, **kwargs)
        built.append((train, transform))
        return transform

    monkeypatch.setattr(data_transforms, "transforms_for", recording)
    data = write_tiny_csv_dataset(tmp_path / "data")
    cfg = helpers.tiny_config(
        data,
        tmp_path / "run",
        "optim.epochs=2",
        "data.train_transform=cutout_randaugment",
        "data.eval_transform=resize_square",
        "data.normalize=false",
    )
    result = train(cfg)
    run_train = [t for is_train, t in built if is_train]
    run_eval = [t for is_train, t in built if not is_train]
    assert run_train and run_eval
    assert any(isinstance(s, UDARandAugment) for s in run_train[0].transforms)
    assert preprocessing_of(run_eval[0], 24).crop is False

    trained = load_trained(result.run_dir)
    pre = preprocessing_of(trained.transform, trained.image_size)
    assert pre.crop is False and pre.resize_size == 24 and pre.mean == (0.0, 0.0, 0.0)
    image = _image(40, 30)
    assert torch.equal(trained.transform(image), run_eval[0](image))
    evaluated = evaluate_checkpoint(result.run_dir / "checkpoints" / "last.ckpt")
    logged = result.last["test/map_total"]
    assert evaluated["models"]["regular"]["map"]["total"] == pytest.approx(logged, abs=1e-6)
