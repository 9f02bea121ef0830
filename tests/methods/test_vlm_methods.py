"""The vision-language methods (LM-CLIP, MLC-NC on CLIP) end to end on tiny data with a
random-weight tiny CLIP (nothing downloaded): train, evaluate from the checkpoint, predict
in eval mode without the text tower, export."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import tiny_data_overrides
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


@pytest.mark.slow
@pytest.mark.parametrize("name", VLM_METHODS)
def test_trains_evaluates_exports(name: str, tiny_csv_dataset: Path, tmp_path: Path) -> None:
    from mlcnc.analysis.export import check_export, export_model
    from mlcnc.engine import evaluate_checkpoint, load_trained, train

    model = ["method.model.embed_dim=16", "method.model.num_heads=2"] if "mlcnc" in name else []
    optim = ["optim.optimizer=adamw", "optim.schedule=cosine"] if name == "lmclip" else []
    cfg = load_config(
        "csv",
        [
            *tiny_data_overrides(tiny_csv_dataset),
            f"method.name={name}",
            f"method.backbone={TINY_CLIP}",
            "method.pretrained=false",
            *model,
            *optim,
            "optim.epochs=1",
            "optim.batch_size=4",
            "train.limit_train_batches=2",
            "train.accelerator=cpu",
            "train.precision=32-true",
            "train.progress=false",
            "train.plots=false",
            f"train.output={tmp_path / 'run'}",
        ],
    )
    result = train(cfg)
    assert math.isfinite(result.last["loss/total"])
    report = evaluate_checkpoint(tmp_path / "run")
    variant = "ema" if "val_ema/map_total" in result.last else "regular"
    assert (
        report["models"]["regular"]["map"]["total"]
        == pytest.approx(result.last["test/map_total"], abs=1e-6)
        or variant == "ema"
    )
    trained = load_trained(tmp_path / "run")
    images = torch.randn(2, 3, 32, 32)
    path = export_model(trained.model, tmp_path / "model.pt", "torchscript", {}, images)
    assert check_export(path, trained.model, images) < 1e-4
