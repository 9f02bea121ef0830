"""Config: every shipped file loads, overrides are typed, bad keys / values name what is allowed."""

from __future__ import annotations

import pytest
import yaml

from mlcnc.config import (
    Config,
    ConfigError,
    config_diff,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
    shipped_configs,
)

EXPECTED = {"synthetic", "voc_lt", "voc_lt_official", "coco_lt", "coco_lt_official", "csv"}


def test_every_shipped_config_loads_and_round_trips() -> None:
    assert set(shipped_configs()) >= EXPECTED
    for name in shipped_configs():
        cfg = load_config(name)
        assert isinstance(cfg, Config)
        again = config_from_dict(config_to_dict(cfg))
        assert config_to_dict(again) == config_to_dict(cfg), name


def test_benchmark_configs_hold_the_spec_hyper_parameters() -> None:
    for name in ("voc_lt", "coco_lt", "voc_lt_official", "coco_lt_official"):
        cfg = load_config(name)
        assert cfg.data.image_size == 224
        assert cfg.method.backbone == "resnet50" and cfg.method.pretrained is True
        assert (cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr) == (100, 64, 1e-4)
        assert (cfg.optim.pct_start, cfg.optim.div_factor, cfg.optim.final_div_factor) == (
            0.2,
            25.0,
            1e4,
        )
        assert (cfg.optim.max_momentum, cfg.optim.base_momentum) == (0.95, 0.85)
        assert cfg.optim.weight_decay == 1e-4
        assert cfg.train.ema_decay == 0.9997
        assert cfg.method.sampler is None  # MLC-NC's own choice: class-aware
    assert load_config("voc_lt").method.recipe == "paper"
    assert load_config("voc_lt_official").method.recipe == "official"
    assert load_config("coco_lt_official").data.name == "coco_lt"


def test_default_config_is_the_quick_synthetic_run() -> None:
    cfg = load_config("synthetic")
    assert cfg.data.name == "synthetic"
    assert cfg.method.name == "mlcnc" and cfg.method.recipe == "paper"
    assert cfg.method.backbone == "tf_efficientnet_lite0" and cfg.method.pretrained is True
    assert 112 <= cfg.data.image_size <= 128


def test_overrides_are_read_as_yaml_and_typed() -> None:
    cfg = load_config(
        "synthetic",
        [
            "optim.lr=3e-4",  # YAML 1.1 reads this as a string; the float field converts it
            "optim.epochs=7",
            "optim.grad_clip=null",
            "train.devices=auto",
            "method.pretrained=false",
            "method.model.embed_dim=64",
            "optim.betas=[0.9, 0.99]",
        ],
    )
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.epochs == 7
    assert cfg.optim.grad_clip is None
    assert cfg.train.devices == "auto"
    assert cfg.method.pretrained is False
    assert cfg.method.model["embed_dim"] == 64
    assert cfg.method.model["num_heads"] == 8  # dict fields merge; the method's default fills in
    assert cfg.optim.betas == (0.9, 0.99)
    # Overrides merge into the file: the file's other keys stay.
    assert cfg.data.image_size == load_config("synthetic").data.image_size


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "optim.lrr=1",
            "unknown config key 'optim.lrr'; allowed keys under 'optim': optimizer, lr",
        ),
        ("trian.seed=1", "unknown config key 'trian'; allowed keys: data, method, optim, train"),
        ("optim.lr=fast", "bad value 'fast' for 'optim.lr'; expected a finite number"),
        ("optim.epochs=2.5", "bad value 2.5 for 'optim.epochs'; expected an integer"),
        ("train.precision=fp8", "allowed values: 'auto', '32-true'"),
        ("data.name=imagenet", "bad value 'imagenet' for 'data.name'; allowed values: 'synthetic'"),
        ("method.name=nope", "bad value 'nope' for 'method.name'; allowed values:"),
        ("method.sampler=balanced", "'method.sampler'; expected one of 'random', 'class_aware'"),
        ("optim.batch_size=0", "'optim.batch_size'; expected an integer >= 1"),
        ("train.ema_decay=1.5", "'train.ema_decay'"),
        ("optim.betas=[0.9]", "'optim.betas'; expected 2 items"),
        ("train.ema_warmup=yes please", "'train.ema_warmup'; expected true or false"),
        ("noequals", "expected key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key_and_the_choices(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_config("synthetic", [override])
    assert message in str(info.value)


def test_section_checks_are_reported_as_config_errors() -> None:
    with pytest.raises(ConfigError, match="data: tail_threshold"):
        load_config(None, ["data.head_threshold=5", "data.tail_threshold=10"])


def test_config_files_may_extend_a_base_and_hold_only_differences(tmp_path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("optim:\n  epochs: 3\n  lr: 0.001\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\noptim:\n  epochs: 4\n")
    cfg = load_config(str(child))
    assert (cfg.optim.epochs, cfg.optim.lr) == (4, 0.001)
    assert cfg.optim.batch_size == Config().optim.batch_size  # untouched default
    by_name = tmp_path / "by_name.yaml"
    by_name.write_text("base: voc_lt\ntrain:\n  seed: 3\n")
    cfg = load_config(str(by_name))
    assert cfg.data.name == "voc_lt" and cfg.train.seed == 3


def test_bad_file_and_unknown_name_errors(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match=r"'optim\.learning_rate'"):
        load_config(str(bad))
    with pytest.raises(FileNotFoundError, match="shipped configs: coco_lt"):
        load_config("no_such_config")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(str(loop))


def test_resolved_config_written_as_yaml_reloads_identically(tmp_path) -> None:
    cfg = load_config("voc_lt", ["train.seed=5", "method.model.proj_dim=16"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    with open(path) as f:
        data = yaml.safe_load(f)
    assert data["train"]["seed"] == 5
    assert set(data) == {"data", "method", "optim", "train"}
    reloaded = load_config(str(path))
    assert config_diff(config_to_dict(reloaded), config_to_dict(cfg)) == []
    changed = load_config(str(path), ["optim.lr=0.5"])
    assert config_diff(config_to_dict(changed), config_to_dict(cfg)) == ["optim.lr"]


def test_file_method_options_left_out_for_another_method() -> None:
    """synthetic.yaml's MLC-NC warm-up option does not block `method.name=erm`."""
    with pytest.warns(UserWarning, match=r"method\.loss\.warmup_epochs does not apply"):
        cfg = load_config("synthetic", ["method.name=erm"])
    assert cfg.method.name == "erm"
    assert cfg.method.loss == {}
    # The file's option stays for the method it was written for ...
    assert load_config("synthetic").method.loss["warmup_epochs"] == 1
    # ... and an override a method does not take is kept, so it is refused by name.
    with pytest.raises(
        ConfigError, match=r"method 'erm': unknown loss option\(s\) 'warmup_epochs'"
    ):
        load_config("synthetic", ["method.name=erm", "method.loss.warmup_epochs=2"])
