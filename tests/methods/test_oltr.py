"""OLTR and LDAM-DRW end to end: ``mlcnc train`` through the CLI on the tiny data (2 epochs:
OLTR's stage 1, then its meta-embedding stage), exact resume, ``load_trained``, and
``mlcnc benchmark --list-methods``."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from helpers import tiny_data_overrides, write_tiny_csv_dataset
from mlcnc.cli import main


def train_args(data: Path, out: Path, name: str, epochs: int, *extra: str) -> list[str]:
    return [
        "train",
        "--config",
        "csv",
        "--seed",
        "0",
        "--output",
        str(out),
        *tiny_data_overrides(data),
        f"method.name={name}",
        "method.backbone=test_resnet",
        "method.pretrained=false",
        f"optim.epochs={epochs}",
        "optim.batch_size=8",
        "data.epoch_length=16",
        "train.accelerator=cpu",
        "train.precision=32-true",
        "train.progress=false",
        "train.plots=false",
        "train.ema_decay=0",
        "train.eval_every=1",
        "train.num_threads=1",  # one thread: a resumed run must be bit-identical
        *extra,
    ]


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def oltr_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("oltr")
    data = write_tiny_csv_dataset(root / "data")
    import mlcnc.engine.loop as loop

    real_save = loop.save_checkpoint

    def keep_epoch_1(state, path):  # the checkpoint after stage 1, kept aside
        real_save(state, path)
        if Path(path).name == "last.ckpt" and state["epoch"] == 1:
            real_save(state, root / "after_stage_1" / "checkpoints" / "last.ckpt")
        return path

    loop.save_checkpoint = keep_epoch_1
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(train_args(data, root / "run", "oltr", 2)) == 0
    finally:
        loop.save_checkpoint = real_save
    return root, root / "run"


@pytest.mark.slow
def test_oltr_trains_both_stages_and_evaluates(oltr_run) -> None:
    _, out = oltr_run
    records = history(out)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[0]["loss/centroid"] == 0.0  # stage 1: BCE alone
    assert records[1]["loss/centroid"] > 0.0  # stage 2: meta-embedding and centroid loss
    assert 0.0 <= records[1]["test/map_total"] <= 100.0


@pytest.mark.slow
def test_oltr_resume_is_exact_and_load_trained_gives_the_same_logits(oltr_run) -> None:
    from mlcnc.engine import load_trained, train

    root, full = oltr_run
    resumed = train(None, resume=root / "after_stage_1")  # resumes at the first stage-2 epoch
    final = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    again = torch.load(resumed.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert again["step"] == final["step"]
    for part in ("model", "criterion"):
        for key, value in final[part].items():
            assert torch.equal(again[part][key], value), (part, key)
    assert again["metrics"]["loss/total"] == final["metrics"]["loss/total"]
    trained = load_trained(full / "checkpoints" / "last.ckpt")  # after stage 2
    assert trained.model.in_stage2
    from mlcnc.methods import MethodConfig, build_method

    method = trained.config.method
    cfg = MethodConfig(name="oltr", backbone=method.backbone, pretrained=False, model=method.model)
    rebuilt = build_method(cfg, 4, trained.class_freq, epochs=2).model.eval()
    rebuilt.load_state_dict(final["model"])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            trained.model(images).logits, rebuilt(images).logits, rtol=0, atol=0
        )
    state = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    assert bool(state["model"]["meta_ready"])
    assert state["criterion"]["centroid_valid"].any()


@pytest.mark.slow
def test_ldam_drw_trains(tmp_path: Path) -> None:
    data = write_tiny_csv_dataset(tmp_path / "data")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(train_args(data, tmp_path / "run", "ldam_drw", 2)) == 0
    assert [r["epoch"] for r in history(tmp_path / "run")] == [1, 2]


def test_benchmark_lists_oltr_and_ldam_drw(capsys) -> None:
    assert main(["benchmark", "--list-methods"]) == 0
    names = capsys.readouterr().out.split()
    assert names.index("ldam") < names.index("ldam_drw") < names.index("mlgcn")
    assert names.index("mlgcn") < names.index("oltr") < names.index("bbn")
