"""Every registered method builds on a tiny backbone and trains one step; options are checked."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from mlcnc.losses.bce import ReweightedBCECriterion
from mlcnc.losses.distribution_balanced import DB_PRESETS, DistributionBalancedCriterion
from mlcnc.methods import METHODS, MethodConfig, build_method, method_defaults, needs_num_samples
from mlcnc.models.linear import LinearHeadModel

NUM_CLASSES = 5
CLASS_FREQ = np.array([40, 20, 9, 4, 2])
NUM_SAMPLES = 50
TINY = "test_resnet"  # timm's tiny test network, random init: nothing is downloaded

EXPECTED_SAMPLERS = {
    "mlcnc": "class_aware",
    "mlcnc_no_fla": "class_aware",
    "mlcnc_no_fpc": "class_aware",
    "mlcnc_learnable_etf": "class_aware",
    "erm": "random",
    "rs": "class_aware",
    "rw": "random",
    "focal": "random",
    "cb_focal": "random",
    "ldam": "random",
    "ldam_drw": "random",
    "asl": "random",
    "db": "class_aware",
    "db_focal": "class_aware",
    "two_way": "class_aware",
}


OWN_MODEL_SAMPLERS = {
    "mlgcn": "random",
    "bbn": "paired_reversed",
    "urs": "paired_class_aware",
    "mfm": "random",
    "oltr": "class_aware",
    # vision-language methods (tests/methods/test_vlm_methods.py, tests/models/test_clip.py)
    "lmclip": "weighted",
    "lmpt": "random",
    "mlcnc_clip_a": "class_aware",
    "mlcnc_clip_b": "class_aware",
    "mlcnc_clip_c": "class_aware",
    "mlcnc_clip_d": "class_aware",
}
"""Rows with their own models or data needs (tested in test_bbn, test_mlgcn, test_urs,
test_oltr, test_baselines_reference and, through the engine, test_table1_methods)."""


def tiny_config(name: str, **changes) -> MethodConfig:
    model = {"embed_dim": 16, "num_heads": 2} if name.startswith("mlcnc") else {}
    return dataclasses.replace(
        MethodConfig(name=name, backbone=TINY, pretrained=False, model=model), **changes
    )


def build(name: str, **changes):
    return build_method(
        tiny_config(name, **changes), NUM_CLASSES, CLASS_FREQ, num_samples=NUM_SAMPLES
    )


def test_every_method_is_registered() -> None:
    # Methods the library registers (tests may register their own, e.g. helpers' tiny method).
    shipped = {n for n in METHODS.names() if METHODS.get(n).build.__module__.startswith("mlcnc.")}
    assert shipped == set(EXPECTED_SAMPLERS) | set(OWN_MODEL_SAMPLERS)
    for name, sampler in OWN_MODEL_SAMPLERS.items():
        assert METHODS.get(name).sampler == sampler


@pytest.mark.parametrize("name", sorted(EXPECTED_SAMPLERS))
def test_method_builds_and_trains_one_step(name: str) -> None:
    torch.manual_seed(0)
    method = build(name)
    assert method.sampler == EXPECTED_SAMPLERS[name]
    assert method.model.num_classes == NUM_CLASSES
    # Leave MLC-NC's FLA-only warm-up so every term (and every head parameter) is used.
    method.criterion.set_epoch(10)
    method.model.train()
    method.criterion.train()
    images = torch.randn(4, 3, 32, 32)
    targets = torch.tensor(
        [[1, 0, 0, 0, 1], [0, 1, 0, 0, 0], [1, 1, 0, 1, 0], [0, 0, 1, 0, 0]]
    ).float()
    output = method.model(images)
    assert output.logits.shape == (4, NUM_CLASSES)
    losses = method.criterion(output, targets)
    assert "total" in losses and len(losses) >= 2
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    trainable = {n: p for n, p in method.model.named_parameters() if p.requires_grad}
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())
    assert any(p.grad.abs().sum() > 0 for n, p in trainable.items() if n.startswith("backbone."))


def test_unknown_option_names_the_option_and_the_allowed_ones() -> None:
    with pytest.raises(
        ValueError, match=r"method 'focal': unknown loss option\(s\) 'gama'; allowed: alpha, gamma"
    ):
        build("focal", loss={"gama": 3})
    with pytest.raises(ValueError, match=r"unknown loss option\(s\) 'beta'; allowed: none"):
        build("erm", loss={"beta": 0.9})
    with pytest.raises(
        ValueError, match=r"unknown model option\(s\) 'width'; allowed: classifier, .*dropout"
    ):
        build("rw", model={"width": 3})
    with pytest.raises(ValueError, match=r"method 'mlcnc': unknown loss option\(s\) 'alpah'"):
        build("mlcnc", loss={"alpah": 1.0})
    with pytest.raises(ValueError, match=r"unknown model option\(s\) 'proj'; allowed: .*proj_dim"):
        build("mlcnc", model={"proj": 3})
    with pytest.raises(KeyError, match="unknown method 'bce'"):
        build("bce")


def test_options_reach_the_criterion_and_model() -> None:
    method = build("rw", loss={"mode": "inv"}, model={"dropout": 0.5})
    assert isinstance(method.criterion, ReweightedBCECriterion)
    assert method.criterion.mode == "inv"
    assert method.model.dropout.p == 0.5
    assert build("rw").criterion.mode == "sqrt_inv"
    cb = build("cb_focal", loss={"beta": 0.9, "gamma": 1.0})
    assert (cb.criterion.beta, cb.criterion.gamma) == (0.9, 1.0)
    asl = build("asl")
    assert (asl.criterion.gamma_neg, asl.criterion.gamma_pos, asl.criterion.clip) == (
        4.0,
        0.0,
        0.05,
    )
    ldam = build("ldam")
    assert ldam.model.classifier_kind == "cosine"
    assert ldam.criterion.scale == 30.0
    assert ldam.criterion.margins.max().item() == pytest.approx(0.5)
    assert build("ldam", model={"classifier": "linear"}).model.classifier_kind == "linear"


def test_sampler_override() -> None:
    assert build("erm", sampler="class_aware").sampler == "class_aware"
    assert build("mlcnc", sampler="random").sampler == "random"


def test_mlcnc_ablations_change_one_component_each() -> None:
    full = build("mlcnc")
    no_fla = build("mlcnc_no_fla")
    no_fpc = build("mlcnc_no_fpc")
    learnable = build("mlcnc_learnable_etf")
    assert (full.criterion.alpha, full.criterion.beta) == (0.5, 0.1)
    assert (no_fla.criterion.alpha, no_fla.criterion.warmup_epochs) == (0.0, 0)
    assert no_fla.criterion.beta == 0.1
    assert (no_fpc.criterion.alpha, no_fpc.criterion.beta) == (0.5, 0.0)
    assert no_fpc.criterion.warmup_epochs == full.criterion.warmup_epochs
    assert isinstance(learnable.model.head.classifier, nn.Parameter)
    assert not isinstance(full.model.head.classifier, nn.Parameter)
    # What an ablation fixes is not an option of it.
    with pytest.raises(
        ValueError, match=r"'mlcnc_no_fla': unknown loss option\(s\) 'warmup_epochs'"
    ):
        build("mlcnc_no_fla", loss={"warmup_epochs": 2})
    assert build("mlcnc_no_fpc", loss={"warmup_epochs": 2}).criterion.warmup_epochs == 2


def test_method_defaults_declare_every_option() -> None:
    focal = method_defaults("focal")
    assert focal["model"].items() >= {"dropout": 0.0, "classifier": "linear"}.items()
    assert focal["loss"] == {"gamma": 2.0, "alpha": None}
    assert method_defaults("ldam")["model"]["classifier"] == "cosine"
    assert "warmup_epochs" in method_defaults("mlcnc")["loss"]
    assert "warmup_epochs" not in method_defaults("mlcnc_no_fla")["loss"]
    assert "classifier_trainable" not in method_defaults("mlcnc_learnable_etf")["model"]
    assert [m for m in METHODS.names() if needs_num_samples(m)] == ["db", "db_focal"]
    with pytest.raises(KeyError, match="unknown method"):
        method_defaults("nope")


def test_db_parameters_presets_and_training_size() -> None:
    db = build("db")
    assert isinstance(db.criterion, DistributionBalancedCriterion)
    assert db.criterion.focal is False and db.criterion.params == DB_PRESETS["voc"]
    assert db.criterion.num_samples == NUM_SAMPLES
    focal = build("db_focal", loss={"preset": "coco", "neg_scale": 3.0})
    assert focal.criterion.focal is True
    assert focal.criterion.params == dataclasses.replace(DB_PRESETS["coco"], neg_scale=3.0)
    assert build("db", loss={"num_samples": 80}).criterion.num_samples == 80
    with pytest.raises(ValueError, match="needs the number of training images"):
        build_method(tiny_config("db"), NUM_CLASSES, CLASS_FREQ)
    with pytest.raises(
        ValueError, match=r"'lvis' for 'method\.loss\.preset'; allowed values: 'voc', 'coco'"
    ):
        build("db", loss={"preset": "lvis"})
    with pytest.raises(ValueError, match=r"unknown loss option\(s\) 'gamma'"):
        build("db", loss={"gamma": 2.0})  # the focal term belongs to db_focal


def test_class_freq_shape_is_checked() -> None:
    with pytest.raises(ValueError, match=r"class_freq must have shape \(5,\)"):
        build_method(tiny_config("erm"), NUM_CLASSES, CLASS_FREQ[:4])


def test_linear_head_model() -> None:
    torch.manual_seed(0)
    model = LinearHeadModel(TINY, False, NUM_CLASSES).eval()
    images = torch.randn(2, 3, 32, 32)
    output = model(images)
    pooled = model.backbone(images).mean(dim=(2, 3))
    assert torch.allclose(output.logits, model.fc(pooled), atol=1e-6)
    assert output.class_features is None and output.attention is None
    with pytest.raises(ValueError, match="LinearHeadModel has no attention"):
        model(images, return_attention=True)
    cosine = LinearHeadModel(TINY, False, NUM_CLASSES, classifier="cosine").eval()
    logits = cosine(images).logits
    assert logits.abs().max() <= 1.0 + 1e-6
    assert cosine.fc.bias is None
    with pytest.raises(ValueError, match="classifier must be one of"):
        LinearHeadModel(TINY, False, NUM_CLASSES, classifier="mlp")
