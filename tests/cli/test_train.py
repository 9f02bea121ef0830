"""``mlcnc train`` / ``mlcnc evaluate`` end to end, with the real MLC-NC model (a tiny timm
backbone, 32 px) on the shared tiny CSV dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import tiny_data_overrides, write_tiny_csv_dataset
from mlcnc.cli import main


def tiny_mlcnc_args(data: Path, out: Path, *extra: str) -> list[str]:
    """Options first, then the key=value overrides (argparse wants positionals together)."""
    return [
        "train",
        "--config",
        "csv",
        "--seed",
        "3",
        "--output",
        str(out),
        *tiny_data_overrides(data),
        "method.backbone=test_efficientnet",
        "method.pretrained=false",
        "method.model.embed_dim=16",
        "method.model.num_heads=2",
        "method.loss.warmup_epochs=1",
        "optim.epochs=2",
        "optim.batch_size=8",
        "data.epoch_length=24",
        "train.accelerator=cpu",
        "train.progress=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:

    root = tmp_path_factory.mktemp("cli")
    data = write_tiny_csv_dataset(root / "data")
    out = root / "run"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(tiny_mlcnc_args(data, out))
    assert code == 0
    return data, out, buffer.getvalue()


@pytest.mark.slow
def test_train_cli_runs_mlcnc_end_to_end_and_prints_the_table(cli_run) -> None:
    _, out, printed = cli_run
    assert "Test mAP (%)" in printed
    for header in ("Total", "Head", "Medium", "Tail"):
        assert header in printed
    assert "last epoch 2, regular" in printed and "last epoch 2, EMA" in printed
    assert "best on val" in printed  # a row, or a note when it is the last epoch
    assert f"run folder: {out}" in printed
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["config"]["train"]["seed"] == 3
    assert state["config"]["method"]["name"] == "mlcnc"
    assert state["step"] == 2 * 3  # 24 class-aware samples / batch 8, two epochs
    # The paper recipe: the ETF classifier is a buffer (in the state dict, not trained).
    assert "head.classifier" in state["model"]
    assert not any("classifier" in str(k) for k in state["optimizer"]["state"])
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/fla", "loss/fpc", "loss/tw", "test/nc1", "test/nc3"} <= set(records[-1])
    assert records[0]["loss/tw"] == 0.0  # warm-up epoch: FLA only (paper recipe)
    assert records[-1]["loss/tw"] > 0.0


@pytest.mark.slow
def test_evaluate_cli_writes_json_matching_the_training_log(cli_run, tmp_path, capsys) -> None:
    _, out, _ = cli_run
    target = tmp_path / "eval.json"
    argv = ["evaluate", str(out), "--checkpoint", "last", "--json", str(target), "--per-class"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Total" in printed and "CF1" in printed and "circle" in printed
    result = json.loads(target.read_text())
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["models"]["regular"]["map"]["total"] == pytest.approx(
        last["test/map_total"], abs=1e-6
    )
    assert result["models"]["ema"]["map"]["tail"] == pytest.approx(
        last["test_ema/map_tail"], abs=1e-6
    )
    assert len(result["models"]["ema"]["per_class"]) == 4


def test_train_cli_reports_a_bad_override(tmp_path, capsys) -> None:
    assert main(["train", "optim.lerning_rate=3"]) == 2
    error = capsys.readouterr().err
    assert "unknown config key 'optim.lerning_rate'" in error and "allowed keys" in error


@pytest.mark.slow
def test_train_cli_refuses_to_resume_with_another_config(cli_run, capsys) -> None:
    data, out, _ = cli_run
    args = [*tiny_mlcnc_args(data, out, "optim.lr=0.01"), "--resume", str(out)]
    assert main(args) == 2
    assert "refusing to resume" in capsys.readouterr().err


def test_train_cli_lists_the_shipped_configs(capsys) -> None:
    assert main(["train", "--list-configs"]) == 0
    assert "synthetic" in capsys.readouterr().out.split()


def test_evaluate_cli_reports_a_missing_checkpoint(tmp_path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "nothing.ckpt")]) == 1  # a checkpoint error
    assert "neither a run folder nor a checkpoint" in capsys.readouterr().err
