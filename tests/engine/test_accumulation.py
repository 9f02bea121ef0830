"""Gradient accumulation (``optim.accumulate_grad_batches``): exact for a per-sample loss, a
warning for a loss with a term over the batch, the epoch's tail, exact resume, validation."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

from helpers import TINY_METHOD, tiny_config, tiny_data_overrides, write_tiny_csv_dataset
from mlcnc.cli import main
from mlcnc.config import load_config
from mlcnc.engine import train


def _run_main(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "two"])
def test_a_bad_accumulate_grad_batches_is_one_line_naming_the_key(value: str) -> None:
    code, err = _run_main(["config", "show", f"optim.accumulate_grad_batches={value}"])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "'optim.accumulate_grad_batches'; expected an integer >= 1" in lines[0]


def _per_sample_run(data: Path, out: Path, batch: int, k: int):
    """One optimizer step of ``erm`` (a mean BCE over samples) on a LayerNorm model (no
    batch statistics), plain SGD at lr 1: the weights move by exactly the gradient."""
    cfg = load_config(
        "csv",
        [
            *tiny_data_overrides(data),
            "method.name=erm",
            "method.backbone=convnext_atto",
            "method.pretrained=false",
            "optim.optimizer=sgd",
            "optim.schedule=constant",
            "optim.lr=1.0",
            "optim.momentum=0",
            "optim.weight_decay=0",
            "optim.epochs=1",
            f"optim.batch_size={batch}",
            f"optim.accumulate_grad_batches={k}",
            f"train.limit_train_batches={k}",
            "train.limit_eval_batches=1",
            "train.accelerator=cpu",
            "train.precision=32-true",
            "train.num_threads=1",
            "train.ema_decay=0",
            "train.progress=false",
            "train.summary=false",
            "train.plots=false",
            f"train.output={out}",
        ],
    )
    result = train(cfg)
    assert result.last["step"] == 1
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["model"]


@pytest.mark.slow  # three short trainings
def test_two_accumulated_batches_step_like_one_batch_of_twice_the_size(tmp_path: Path) -> None:
    data = write_tiny_csv_dataset(tmp_path / "data")
    accumulated = _per_sample_run(data, tmp_path / "k2", batch=4, k=2)
    whole = _per_sample_run(data, tmp_path / "k1", batch=8, k=1)
    half = _per_sample_run(data, tmp_path / "half", batch=4, k=1)  # the first 4 images only
    moved = 0.0
    for key, value in whole.items():
        if not value.is_floating_point():
            continue
        torch.testing.assert_close(accumulated[key], value, rtol=0, atol=1e-6, msg=key)
        moved = max(moved, (half[key] - value).abs().max().item())
    assert moved > 1e-3  # the test sees a difference between 4 and 8 images


@pytest.mark.slow  # a short training through the CLI
def test_a_batch_level_loss_warns_once_at_the_start(tmp_path: Path) -> None:
    data = write_tiny_csv_dataset(tmp_path / "data")
    common = [
        "train", "--config", "csv", *tiny_data_overrides(data), "method.backbone=resnet18",
        "method.pretrained=false", "optim.epochs=1", "optim.batch_size=4",
        "optim.accumulate_grad_batches=2", "train.limit_train_batches=2",
        "train.limit_eval_batches=1", "train.accelerator=cpu", "train.progress=false",
        "train.summary=false", "train.plots=false",
    ]  # fmt: skip
    code, err = _run_main([*common, "method.name=mlcnc", f"train.output={tmp_path / 'a'}"])
    assert code == 0, err
    warned = [line for line in err.splitlines() if "accumulate_grad_batches" in line]
    assert warned == [
        "mlcnc: WARNING: optim.accumulate_grad_batches=2 with method mlcnc, whose loss has a "
        "term over the batch: each step averages the losses of 2 batches of 4, which is not "
        "the loss of one batch of 8; raise optim.batch_size instead for the same loss"
    ]
    code, err = _run_main([*common, "method.name=erm", f"train.output={tmp_path / 'b'}"])
    assert code == 0, err
    assert "accumulate_grad_batches" not in err


@pytest.mark.slow  # trains, then resumes
@pytest.mark.usefixtures("tiny_method")
def test_the_epoch_tail_steps_and_a_resume_continues_exactly(tmp_path: Path) -> None:
    """25 images in batches of 5: 5 batches an epoch, with k=2 three steps (2 + 2 + 1)."""
    import mlcnc.engine.loop as loop

    data = write_tiny_csv_dataset(tmp_path / "data")
    cfg = tiny_config(data, tmp_path / "run", "optim.accumulate_grad_batches=2")
    assert cfg.method.name == TINY_METHOD
    real_save, saved = loop.save_checkpoint, {}

    def keep_copies(state, path):
        real_save(state, path)
        if Path(path).name == "last.ckpt" and state["epoch"] == 2:
            saved[2] = real_save(state, tmp_path / "at2" / "checkpoints" / "last.ckpt")
        return path

    loop.save_checkpoint = keep_copies
    try:
        result = train(cfg)
    finally:
        loop.save_checkpoint = real_save
    assert [r["step"] for r in result.history] == [3, 6, 9]
    resumed = train(None, resume=tmp_path / "at2")
    final = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    again = torch.load(resumed.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert again["step"] == final["step"] == 9
    for part in ("model", "ema", "criterion", "optimizer"):
        if part == "optimizer":
            final_part, again_part = final[part]["state"], again[part]["state"]
            pairs = [
                (f"{i}.{n}", v, again_part[i][n])
                for i, s in final_part.items()
                for n, v in s.items()
            ]
        else:
            pairs = [(n, v, again[part][n]) for n, v in final[part].items()]
        for name, expected, got in pairs:
            assert torch.equal(got, expected), (part, name)
    assert again["metrics"]["loss/total"] == final["metrics"]["loss/total"]
