"""Transform presets (spec B4): the recipe's steps, normalisation stats, deterministic eval."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from mlcnc.data.transforms import build_transforms, eval_resize_size

STATS = {  # written from the spec: ImageNet for paper, iNaturalist for official
    "paper": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "official": ((0.466, 0.471, 0.380), (0.195, 0.194, 0.192)),
}


def _image(h: int = 90, w: int = 130, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("recipe", ["paper", "official"])
@pytest.mark.parametrize("train", [True, False])
def test_output_shape_dtype_and_pil_input(recipe, train):
    transform = build_transforms(recipe, 48, train)
    out = transform(_image())
    assert type(out) is torch.Tensor and out.shape == (3, 48, 48) and out.dtype == torch.float32
    pil = Image.fromarray(_image().permute(1, 2, 0).numpy())
    assert transform(pil).shape == (3, 48, 48)


@pytest.mark.parametrize("recipe", ["paper", "official"])
def test_normalisation_statistics(recipe):
    mean, std = STATS[recipe]
    out = build_transforms(recipe, 32, train=False)(torch.full((3, 40, 50), 200, dtype=torch.uint8))
    for c in range(3):
        torch.testing.assert_close(out[c], torch.full((32, 32), (200 / 255 - mean[c]) / std[c]))


def test_eval_is_resize_short_side_then_center_crop_and_deterministic():
    image = _image(90, 130)
    transform = build_transforms("paper", 56, train=False)
    assert eval_resize_size(224) == 256 and eval_resize_size(56) == 64
    resized = F.resize(image, [64], antialias=True)  # short side 90 -> 64, aspect kept
    assert resized.shape == (3, 64, 92)
    top, left = (64 - 56) // 2, (92 - 56) // 2
    crop = resized[:, top : top + 56, left : left + 56].float() / 255
    mean, std = (torch.tensor(s).view(3, 1, 1) for s in STATS["paper"])
    torch.testing.assert_close(transform(image), (crop - mean) / std, atol=1e-5, rtol=0)
    torch.manual_seed(0)
    first = transform(image)
    torch.manual_seed(1)
    assert torch.equal(transform(image), first)  # no randomness, no flip


def test_eval_flip_only_when_asked():
    image = _image(64, 64)  # already at the resize size of 56: the crop is symmetric
    plain = build_transforms("official", 56, train=False)(image)
    flipping = build_transforms("official", 56, train=False, eval_flip=True)
    torch.manual_seed(0)
    outs = [flipping(image) for _ in range(20)]
    assert any(torch.equal(o, plain) for o in outs)
    assert any(torch.allclose(o, plain.flip(-1)) and not torch.equal(o, plain) for o in outs)


def test_train_recipe_steps_and_seeded_randomness():
    transform = build_transforms("paper", 40, train=True)
    names = [type(t).__name__ for t in transform.transforms]
    assert names == [
        "ToImage",
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "ColorJitter",
        "ToDtype",
        "Normalize",
        "ToPureTensor",
    ]
    crop, flip, jitter = transform.transforms[1:4]
    assert crop.scale == (0.08, 1.0) and tuple(crop.size) == (40, 40)
    assert flip.p == 0.5
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.6, 1.4)
    assert jitter.hue is None
    image = _image()
    torch.manual_seed(3)
    a = transform(image)
    torch.manual_seed(3)
    assert torch.equal(transform(image), a)
    assert not torch.equal(transform(image), a)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown recipe 'vg'"):
        build_transforms("vg", 224, True)
    with pytest.raises(ValueError, match="image_size"):
        build_transforms("paper", 0, False)
