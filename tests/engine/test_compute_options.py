"""Speed options change speed, not results: channels_last, threads, fused Adam, compile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import tiny_data_overrides
from mlcnc.config import ConfigError, load_config


def _config(data: Path, out: Path, *extra: str):
    return load_config(
        "csv",
        [
            *tiny_data_overrides(data),
            "method.name=erm",
            "method.backbone=resnet18",
            "method.pretrained=false",
            "optim.epochs=1",
            "optim.batch_size=4",
            "optim.schedule=constant",
            "train.limit_train_batches=3",
            "train.accelerator=cpu",
            "train.precision=64-true",
            "train.progress=false",
            "train.plots=false",
            f"train.output={out}",
            *extra,
        ],
    )


@pytest.mark.slow
def test_channels_last_gives_the_same_run(tiny_csv_dataset: Path, tmp_path: Path) -> None:
    from mlcnc.engine import train

    plain = train(_config(tiny_csv_dataset, tmp_path / "plain", "train.channels_last=false"))
    nhwc = train(_config(tiny_csv_dataset, tmp_path / "nhwc", "train.channels_last=true"))
    assert nhwc.last["loss/total"] == pytest.approx(plain.last["loss/total"], rel=1e-9)
    assert nhwc.last["test/map_total"] == pytest.approx(plain.last["test/map_total"], abs=1e-9)
    a = torch.load(tmp_path / "plain" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "nhwc" / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-9, atol=1e-10)


def test_the_options_are_checked_and_auto_by_default() -> None:
    cfg = load_config("synthetic")
    assert cfg.train.num_threads == "auto" and cfg.train.channels_last is False
    assert cfg.train.compile is False
    with pytest.raises(ConfigError, match=r"train\.num_threads"):
        load_config("synthetic", ["train.num_threads=0"])
    with pytest.raises(ConfigError, match=r"train\.channels_last"):
        load_config("synthetic", ["train.channels_last=maybe"])


def test_auto_threads_follow_the_cores_and_the_processes(monkeypatch) -> None:
    from lightning.fabric import Fabric

    from mlcnc.engine import setup, threads

    monkeypatch.setattr(threads, "available_cores", lambda: 6)
    monkeypatch.setattr(threads, "idle_cores", lambda *a, **k: 6)
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    fabric = Fabric(accelerator="cpu", devices=1)
    setup.set_compute_options(fabric, load_config("synthetic"))
    setup.set_compute_options(fabric, load_config("synthetic", ["train.num_threads=3"]))
    assert seen == [6, 3]
