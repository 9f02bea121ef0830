"""CUDA checks: mixed precision keeps the losses in float32 and finite, CUDA and CPU agree,
and ``mlcnc train`` runs end to end on a GPU. Skipped where no CUDA device is present."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from helpers import write_tiny_csv_dataset
from mlcnc.cli import main
from mlcnc.losses import MLCNCLoss
from mlcnc.models import create_mlcnc

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

NUM_CLASSES = 6


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_mlcnc(
        NUM_CLASSES, backbone="test_efficientnet", pretrained=False, embed_dim=16, num_heads=2
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_losses_float32_and_finite_under_cuda_autocast(dtype: torch.dtype) -> None:
    model = tiny_model().cuda()
    criterion = MLCNCLoss(NUM_CLASSES, proj_dim=model.proj_dim).cuda().train()
    images = torch.randn(8, 3, 32, 32, device="cuda")
    targets = (torch.rand(8, NUM_CLASSES, device="cuda") < 0.4).float()
    targets[:, 0] = 1.0
    for epoch in range(2):  # FLA-only warm-up, then every term against real prototypes
        criterion.warmup_epochs = 1
        criterion.set_epoch(epoch)
        with torch.autocast("cuda", dtype=dtype):
            output = model(images)
            losses = criterion(output, targets)
        for name, value in losses.items():
            assert value.dtype == torch.float32, name
            assert torch.isfinite(value), name
        model.zero_grad()
        losses["total"].backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        criterion.end_epoch(None)
    assert losses["fpc"] > 0 and losses["tw"] > 0
    assert criterion.prototypes.device.type == "cuda"
    assert bool(criterion.prototype_valid[0])


def test_cuda_logits_match_cpu_in_float32() -> None:
    model = tiny_model().eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        cpu = model(images).logits
        gpu = model.cuda()(images.cuda()).logits.cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


def test_train_cli_on_cuda_with_mixed_precision(tmp_path: Path) -> None:

    data = write_tiny_csv_dataset(tmp_path / "data")
    out = tmp_path / "run"
    args = [
        "train", "--config", "csv", "--output", str(out),
        f"data.train_csv={data / 'train.csv'}", f"data.val_csv={data / 'val.csv'}",
        f"data.test_csv={data / 'test.csv'}", "data.image_size=32", "data.num_workers=0",
        "data.head_threshold=10", "data.tail_threshold=4", "data.epoch_length=24",
        "method.backbone=test_efficientnet", "method.pretrained=false",
        "method.model.embed_dim=16", "method.model.num_heads=2", "method.loss.warmup_epochs=1",
        "optim.epochs=2", "optim.batch_size=8", "train.accelerator=cuda", "train.progress=false",
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["epoch"] == 2
    for key in ("loss/total", "loss/fla", "loss/fpc", "loss/tw", "test/map_total"):
        assert torch.isfinite(torch.tensor(float(last[key]))), key
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["config"]["train"]["accelerator"] == "cuda"
