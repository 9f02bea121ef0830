"""The config is checked when it is loaded, before any data is read: one line naming the key."""

from __future__ import annotations

import builtins
import dataclasses
import inspect
import io
import os
import typing
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from mlcnc.cli import main
from mlcnc.config import ConfigError, load_config
from mlcnc.methods import METHODS, MLCNCLossOptions, MLCNCModelOptions, SamplerKind, resolve_options
from mlcnc.recipes import RECIPES

MISSING = ["data.train_csv=/nonexistent/train.csv", "data.test_csv=/nonexistent/test.csv"]

REFUSED = [
    ("method.recipe=oficial", "bad value 'oficial' for 'method.recipe'; allowed values: 'paper', 'official'"),
    ("method.loss.alpah=0.3", "unknown loss option(s) 'alpah'"),
    ("method.backbone=resnet5O", "bad value 'resnet5O' for 'method.backbone'"),
    ("method.model.proj_dim=0", "bad value 0 for 'method.model.proj_dim'; expected an integer >= 1"),
    ("train.select_metric=val/mAP_total", "bad value 'val/mAP_total' for 'train.select_metric'"),
    ("data.image_size=0", "bad value 0 for 'data.image_size'; expected an integer >= 16"),
    ("train.eval_batch_size=0", "bad value 0 for 'train.eval_batch_size'"),
    ("optim.lr=-1", "bad value -1 for 'optim.lr'; expected a finite number > 0"),
    ("optim.optimizer=lamb", "bad value 'lamb' for 'optim.optimizer'"),
    ("method.loss.fpc_reduction=sum", "bad value 'sum' for 'method.loss.fpc_reduction'"),
]  # fmt: skip


@pytest.fixture
def no_file_opened(monkeypatch):
    """Records every attempt to read the data: opening or stat-ing a path under
    /nonexistent, or calling a split reader."""
    import mlcnc.data
    import mlcnc.data.readers

    touched: list[str] = []
    real_open, real_stat = builtins.open, os.stat

    def guarded_open(file, *args, **kwargs):
        if "nonexistent" in str(file):
            touched.append(f"open {file}")
        return real_open(file, *args, **kwargs)

    def guarded_stat(path, *args, **kwargs):
        if "nonexistent" in str(path):
            touched.append(f"stat {path}")
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "stat", guarded_stat)
    for module, name in ((mlcnc.data, "build_splits"), (mlcnc.data.readers, "read_csv_split")):
        real = getattr(module, name)

        def recording(*args, _real=real, _name=name, **kwargs):
            touched.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, recording)
    return touched


def test_the_guard_sees_a_data_read(no_file_opened: list[str]) -> None:
    import mlcnc.data

    with pytest.raises(Exception):  # noqa: B017 - any error: the files do not exist
        mlcnc.data.build_splits(load_config("csv", MISSING).data)
    assert no_file_opened


@pytest.mark.parametrize(("override", "message"), REFUSED)
def test_bad_values_refused_on_load_before_any_data_is_read(
    override: str, message: str, no_file_opened: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("csv", [*MISSING, override])
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert no_file_opened == []


@pytest.mark.parametrize(("override", "message"), REFUSED[:6])
def test_cli_refuses_them_in_one_line_with_exit_code_2(override: str, message: str) -> None:
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main(["train", "--config", "csv", *MISSING, override])
    assert code == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlcnc train: error: ")
    assert message in lines[0]
    assert "Traceback" not in err.getvalue()


def test_overrides_stand_anywhere_on_the_command_line() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["config", "show", "optim.epochs=3", "--config", "voc_lt", "train.seed=4"]) == 0
    shown = yaml.safe_load(out.getvalue())
    assert shown["optim"]["epochs"] == 3 and shown["train"]["seed"] == 4
    assert shown["data"]["name"] == "voc_lt"
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(
            ["train", "optim.epochs=2", "--config", "csv", "--dry-run", *MISSING, "--seed", "3"]
        )
    assert code == 0 and "config OK" in out.getvalue()


def test_config_show_gives_the_coco_db_preset_and_train_uses_it() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["config", "show", "--config", "coco_lt", "method.name=db"]) == 0
    shown = yaml.safe_load(out.getvalue())
    loss = shown["method"]["loss"]
    assert (loss["preset"], loss["map_mu"], loss["neg_scale"]) == ("coco", 0.2, 2.0)
    # The config train runs is the one shown (the same resolution), and its criterion uses it.
    cfg = load_config("coco_lt", ["method.name=db"])
    assert cfg.method.loss == loss
    import numpy as np

    from mlcnc.methods import build_method

    cfg.method.backbone, cfg.method.pretrained = "test_resnet", False
    method = build_method(cfg.method, 3, np.array([50, 10, 2]), num_samples=60, data_name="coco_lt")
    assert (method.criterion.params.map_mu, method.criterion.params.neg_scale) == (0.2, 2.0)
    # VOC-LT keeps VOC's.
    assert load_config("voc_lt", ["method.name=db"]).method.loss["map_mu"] == 0.3


def test_config_show_prints_every_key_and_refuses_bad_ones() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["config", "show"]) == 0
    shown = yaml.safe_load(out.getvalue())
    assert set(shown) == {"data", "method", "optim", "train"}
    assert shown["method"]["loss"]["prototype_mode"] == "per_epoch"  # the recipe's switch
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        assert main(["config", "show", "optim.lrr=1"]) == 2
    assert (
        "unknown config key 'optim.lrr'" in err.getvalue() and "did you mean 'lr'" in err.getvalue()
    )


def test_the_recipe_sets_every_switch_in_one_place() -> None:
    official = load_config("voc_lt_official")
    assert official.method.model["classifier_trainable"] is RECIPES["official"].classifier_trainable
    assert official.method.loss["legacy_warmup"] is RECIPES["official"].legacy_warmup
    assert official.method.loss["prototype_mode"] == RECIPES["official"].prototype_mode
    from torchvision.transforms import v2

    from mlcnc.data.transforms import build_transforms

    for name, recipe in RECIPES.items():
        steps = build_transforms(name, 32, train=False).transforms
        normalize = next(s for s in steps if isinstance(s, v2.Normalize))
        assert tuple(normalize.mean) == recipe.mean and tuple(normalize.std) == recipe.std


def test_mlcnc_options_are_the_builders_keyword_arguments() -> None:
    """The typed options cannot drift from what the head and the loss take."""
    from mlcnc.losses import MLCNCLoss
    from mlcnc.models.head import MLCNCHead

    def keywords(fn, exclude):
        return {
            n
            for n, p in inspect.signature(fn).parameters.items()
            if n not in exclude and p.default is not inspect.Parameter.empty
        }

    assert {f.name for f in dataclasses.fields(MLCNCModelOptions)} == keywords(
        MLCNCHead.__init__, set()
    )
    assert {f.name for f in dataclasses.fields(MLCNCLossOptions)} == keywords(
        MLCNCLoss.__init__, {"proj_dim", "recipe"}
    )


def test_every_method_record_resolves_idempotently_with_a_display_name() -> None:
    from mlcnc.methods import MethodConfig

    for name in METHODS.registered():
        record = METHODS.get(name)
        assert record.display_name and record.sampler in typing.get_args(SamplerKind)
        for data in ("synthetic", "voc_lt", "coco_lt"):
            model, loss = resolve_options(MethodConfig(name=name), data)
            again = resolve_options(MethodConfig(name=name, model=model, loss=loss), data)
            assert again == (model, loss), name


def test_bad_yaml_file_is_one_line_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml line \d+: not valid YAML"):
        load_config(str(bad))


def test_a_checkpoint_of_the_previous_version_still_loads(tmp_path_factory) -> None:
    """Version 0.1.0 wrote the config as given (method options not filled in, no
    ``data.augment``); such a checkpoint rebuilds the same model."""
    import torch

    from mlcnc.engine import load_trained
    from tiny_trained import tiny_trained_run

    run = tiny_trained_run(tmp_path_factory)
    state = torch.load(run.checkpoint, weights_only=True)
    old = state["config"]
    given_model = {
        key: old["method"]["model"][key] for key in ("embed_dim", "num_heads", "proj_dim")
    }
    old["method"]["model"], old["method"]["loss"] = given_model, {"warmup_epochs": 0}
    del old["data"]["augment"]
    old_path = tmp_path_factory.mktemp("old") / "old.ckpt"
    torch.save(state, old_path)
    trained = load_trained(old_path, use_ema=False)
    current = load_trained(run.checkpoint, use_ema=False)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(trained.model(images).logits, current.model(images).logits)
    assert trained.config.method.model == current.config.method.model
