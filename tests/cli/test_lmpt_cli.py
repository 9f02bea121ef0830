"""LMPT end to end through the CLI on the tiny CSV data with a random-weight tiny open_clip
tower (nothing downloaded): train (captions from a file, the plateau schedule on val) ->
evaluate -> predict -> export, without the caption file after training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import tiny_data_overrides
from mlcnc.cli import main

pytestmark = pytest.mark.slow


def write_captions(data: Path, out: Path) -> Path:
    """One `<image path> <caption>` line per training image, in reverse order (matched by
    path), the caption made from its labels."""
    rows = (data / "train.csv").read_text().splitlines()[1:]
    lines = [f"{r.split(',')[0]} a photo of {r.split(',')[1].replace(';', ' and ')}" for r in rows]
    out.write_text("\n".join(reversed(lines)) + "\n")
    return out


def test_train_evaluate_predict_export(tiny_csv_dataset: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    captions = write_captions(tiny_csv_dataset, tmp_path / "captions.txt")
    code = main(
        [
            "train", "--config", "voc_lt_lmpt", "data.name=csv",
            *tiny_data_overrides(tiny_csv_dataset),
            "method.backbone=open_clip:mlcnc-tiny-rn", "method.pretrained=false",
            f"method.model.captions={captions}", "method.model.n_ctx=4",
            "optim.epochs=2", "optim.batch_size=8", "optim.plateau_patience=0", "optim.lr=0.05",
            "train.limit_train_batches=2", "train.accelerator=cpu", "train.progress=false",
            "train.plots=false", "train.num_threads=1", f"train.output={run}",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(math.isfinite(r["loss/cse"]) and r["loss/cse"] > 0 for r in history)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert "caption_tokens" not in ckpt["model"] and "prompt_learner.ctx" in ckpt["model"]
    assert ckpt["scheduler"]["mode"] == "max" and ckpt["scheduler"]["last_epoch"] == 2
    captions.unlink()  # inference needs no caption
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    assert "map" in capsys.readouterr().out.lower()
    image = tiny_csv_dataset / "images" / "test_000.png"
    assert main(["predict", str(run), str(image), "--top-k", "2"]) == 0
    assert "test_000.png" in capsys.readouterr().out
    out = tmp_path / "model.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    assert out.is_file()
