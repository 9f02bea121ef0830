"""The vision-language methods (LM-CLIP, MLC-NC on CLIP) with a random-weight tiny CLIP
(nothing downloaded): registration, published recipes, inference without the text tower.
Train / evaluate / predict / export through the CLI: tests/analysis/test_clip_roundtrip.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlcnc.cli import main
from mlcnc.config import load_config
from mlcnc.methods import METHODS, MethodConfig, build_method
from mlcnc.methods.lmclip import LMCLIP_PRESETS

VLM_METHODS = ("lmclip", "mlcnc_clip_a", "mlcnc_clip_b", "mlcnc_clip_c", "mlcnc_clip_d")
TINY_CLIP = "open_clip:mlcnc-tiny-vit"


def test_registered_and_listed(capsys):
    for name in VLM_METHODS:
        assert name in METHODS.names()
    assert METHODS.get("lmclip").sampler == "weighted"
    try:
        main(["benchmark", "--list-methods"])
    except SystemExit as done:
        assert done.code in (0, None)
    listed = capsys.readouterr().out.split()
    assert all(name in listed for name in VLM_METHODS)


@pytest.mark.parametrize(
    ("config", "preset"),
    [
        ("voc_lt_lmclip", "voc_mlt_vitb16"),
        ("voc_lt_lmclip_rn50", "voc_mlt_rn50"),
        ("coco_lt_lmclip", "coco_mlt_vitb16"),
        ("coco_lt_lmclip_rn50", "coco_mlt_rn50"),
    ],
)
def test_published_recipes(config, preset):
    cfg = load_config(config)
    want = LMCLIP_PRESETS[preset]
    loss = cfg.method.loss
    assert (loss["asl_mul"], loss["gamma_neg"], loss["label_smoothing"]) == (
        want["asl_mul"],
        want["gamma_neg"],
        want["label_smoothing"],
    )
    assert loss["class_weight_power"] == cfg.data.sampler_power == want["class_weight_power"]
    assert cfg.optim.lr == want["lr"] and cfg.optim.optimizer == "adamw"
    assert cfg.optim.schedule == "cosine" and cfg.optim.batch_size == 8
    assert cfg.optim.epochs == 50 and cfg.optim.betas == (0.9, 0.98)
    assert cfg.data.train_transform == "resize_square_flip"


def test_lmclip_inference_uses_the_stored_label_embeddings(monkeypatch):
    cfg = MethodConfig(name="lmclip", backbone=TINY_CLIP, pretrained=False)
    method = build_method(cfg, 3, np.array([5, 3, 1]), class_names=["cat", "dog", "traffic light"])
    model = method.model.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = model(images).logits
    state = model.state_dict()
    assert "label_embeddings" in state and "label_tokens" in state

    def no_text(*args, **kwargs):
        raise AssertionError("the text tower ran at inference")

    monkeypatch.setattr(model.clip, "encode_text", no_text)
    with torch.no_grad():
        torch.testing.assert_close(model(images).logits, first)
    # A rebuilt model (placeholder names) loads everything from the state dict.
    rebuilt = build_method(cfg, 3, np.array([5, 3, 1])).model
    rebuilt.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(images).logits, first)


@pytest.mark.parametrize("name", ["lmclip", "lmpt"])
def test_inference_module_is_the_image_tower_and_fixed_label_embeddings(name):
    """What ``mlcnc export`` writes of a text-conditioned model: the same logits in eval
    mode, and no text-tower parameter."""
    cfg = MethodConfig(name=name, backbone=TINY_CLIP, pretrained=False)
    model = build_method(cfg, 3, np.array([5, 3, 1]), num_samples=9).model.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(images).logits
        view = model.inference_module()
        torch.testing.assert_close(view(images).logits, expected)
    names = [n for n, _ in view.named_parameters()] + [n for n, _ in view.named_buffers()]
    assert all(
        n.startswith("visual.") for n in names if n not in ("label_embeddings", "logit_scale")
    )
