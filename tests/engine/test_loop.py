"""Engine: optimiser groups and schedule, the loop, checkpoints, resume, NaN stop, evaluation.

The loop is driven with a tiny registered method (a conv + linear model with dropout and a
BCE criterion that keeps an all-reduced buffer, like MLC-NC's prototype sums) on the shared
tiny CSV dataset, so each run takes a few seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from helpers import onecycle_lrs
from mlcnc.config import OptimConfig
from mlcnc.engine.checkpoint import load_checkpoint, save_checkpoint
from mlcnc.engine.evaluation import format_map_table, merge_gathered
from mlcnc.engine.optim import build_optimizer, build_scheduler, parameter_groups
from mlcnc.models.output import ModelOutput

# --------------------------------------------------------------------------------------
# optimiser and schedule


def test_parameter_groups_decay_only_matrices_and_skip_buffers() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    model.register_buffer("fixed_classifier", torch.ones(4, 2))  # like the paper's ETF buffer
    model.register_parameter("temperature", nn.Parameter(torch.ones(1)))
    decay, no_decay = parameter_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    not_decayed = {id(p) for p in no_decay["params"]}
    expected = {model[0].bias, model[1].weight, model[1].bias, model[3].bias, model.temperature}
    assert not_decayed == {id(p) for p in expected}
    assert isinstance(build_optimizer(model, OptimConfig()), torch.optim.Adam)


def test_onecycle_schedule_matches_the_spec_values() -> None:
    """Spec B4's checked lr values (VOC: 243 steps per epoch, 100 epochs) and beta1
    0.95 -> 0.85 at the peak (epoch 20) -> 0.95."""
    steps_per_epoch = 243
    cfg = OptimConfig()
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    lrs, beta1 = [], []
    optimizer.step()  # one real step first; the schedule alone is under test
    for _ in range(cfg.epochs * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        beta1.append(optimizer.param_groups[0]["betas"][0])
        scheduler.step()
    spec = {
        0: 4.0e-6,
        5: 1.81e-5,
        10: 5.2e-5,
        20: 1.0e-4,
        40: 8.5e-5,
        60: 5.0e-5,
        80: 1.46e-5,
        99: 3.9e-8,
    }
    for epoch, lr in spec.items():
        assert lrs[epoch * steps_per_epoch] == pytest.approx(lr, rel=0.02), epoch
    assert max(lrs) == pytest.approx(1e-4)
    assert lrs[-1] == pytest.approx(4e-10, rel=0.5)
    assert beta1[0] == pytest.approx(0.95) and beta1[-1] == pytest.approx(0.95, abs=1e-4)
    assert beta1[20 * steps_per_epoch] == pytest.approx(0.85, abs=1e-4)


# --------------------------------------------------------------------------------------
# checkpoints


def test_checkpoint_save_is_atomic_and_an_interrupted_save_keeps_the_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    first = {
        "model": {"w": torch.arange(4.0)},
        "config": {},
        "class_names": ["a"],
        "class_freq": [1],
    }
    save_checkpoint(first, path)
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({**first, "model": {"w": torch.zeros(4)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(4.0))
    assert sorted(os.listdir(path.parent)) == ["last.ckpt"]  # no temp file left behind


def test_load_checkpoint_refuses_foreign_files(tmp_path: Path) -> None:
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="lacks model, config, class_names, class_freq"):
        load_checkpoint(other)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.ckpt")


# --------------------------------------------------------------------------------------
# evaluation helpers


@pytest.mark.parametrize(("num_images", "world_size"), [(10, 4), (7, 3), (8, 2), (3, 4)])
def test_merge_gathered_drops_sampler_padding(num_images: int, world_size: int) -> None:
    """Shards of a padded DistributedSampler, gathered as (W, n), give each image once."""
    scores = np.random.default_rng(0).random((num_images, 3))
    shards = [
        list(DistributedSampler(range(num_images), world_size, rank, shuffle=False))
        for rank in range(world_size)
    ]
    gathered_indices = np.array(shards)  # (W, n), with repeats where padded
    assert gathered_indices.size >= num_images
    gathered_scores = scores[gathered_indices]  # (W, n, 3)
    indices, (merged,) = merge_gathered(gathered_indices, gathered_scores)
    np.testing.assert_array_equal(indices, np.arange(num_images))
    np.testing.assert_array_equal(merged, scores)


def test_map_table_lists_every_group() -> None:
    table = format_map_table(
        [("last epoch 3, regular", {"total": 50.0, "head": 60.0, "medium": 40.0, "tail": 30.5})]
    )
    assert "Total" in table and "Tail" in table
    assert "50.00" in table and "30.50" in table


def test_build_scheduler_at_continues_the_plan_from_a_step() -> None:
    from mlcnc.engine.optim import build_scheduler_at

    cfg = OptimConfig(epochs=3, lr=0.01)
    reference = onecycle_lrs(3, 10)
    for step in (1, 9, 17, 30):
        optimizer = build_optimizer(nn.Linear(2, 2), cfg)
        scheduler = build_scheduler_at(optimizer, cfg, 10, step)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(reference[step], rel=1e-12)
        if step < 30:
            scheduler.step()
            assert optimizer.param_groups[0]["lr"] == pytest.approx(reference[step + 1])


class _Affine(nn.Module):
    """logits = images.mean(H, W) @ weight + bias (a linear head on pooled pixels)."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[0], weight.shape[1])
        with torch.no_grad():
            self.linear.weight.copy_(weight.T)
            self.linear.bias.copy_(bias)

    def forward(self, images: Tensor, return_attention: bool = False) -> ModelOutput:
        return ModelOutput(logits=self.linear(images.mean(dim=(2, 3))))


def _loader(images: Tensor, targets: Tensor):
    from torch.utils.data import TensorDataset

    from mlcnc.engine.evaluation import eval_loader

    dataset = TensorDataset(images, targets, torch.arange(len(images)))
    return eval_loader(dataset, batch_size=2, num_workers=0)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_evaluation_ranks_float32_logits_without_saturation_or_bf16_ties(precision: str) -> None:
    """Logits 30, 25, 20, 17 (float32 sigmoids: all exactly 1.0) and 0.1000 ... 0.1003 (one
    bf16 value): AP must rank them, in float32, under every precision."""
    from lightning.fabric import Fabric

    from mlcnc.engine.evaluation import predict_models, score_predictions

    fabric = Fabric(accelerator="cpu", devices=1, precision=precision)
    base = torch.tensor([[30.0, 0.1000], [25.0, 0.1001], [20.0, 0.1002], [17.0, 0.1003]])
    images = base[:, :, None, None].expand(4, 2, 3, 3).contiguous()
    model = _Affine(torch.eye(2), torch.zeros(2))
    targets = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=torch.float32)
    predictions = predict_models({"m": model}, _loader(images, targets), fabric)["m"]
    scored = score_predictions(predictions, {"head": np.arange(2)}, ["a", "b"])
    # class a: positives at ranks 1 and 3 -> (1 + 2/3) / 2; class b: 0.1003 ranks first,
    # so its positives are at ranks 1 and 3 as well.
    np.testing.assert_allclose(scored["ap"], [5 / 6, 5 / 6])
    assert scored["f1"]["OF1"] == pytest.approx(100 * 2 * 4 / (8 + 4))  # all p >= 0.5
    assert predictions.logits.dtype == np.float32
    np.testing.assert_allclose(predictions.logits, base.numpy(), rtol=1e-6)


def test_bf16_true_evaluation_casts_inputs_to_the_weights_dtype() -> None:
    from lightning.fabric import Fabric

    from mlcnc.engine.evaluation import predict_models

    fabric = Fabric(accelerator="cpu", devices=1, precision="bf16-true")
    model = _Affine(torch.eye(2), torch.zeros(2)).to(torch.bfloat16)
    images = torch.rand(4, 2, 3, 3)  # float32, as the data loader gives them
    targets = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=torch.float32)
    predictions = predict_models({"m": model}, _loader(images, targets), fabric)["m"]
    assert predictions.logits.dtype == np.float32
    with torch.no_grad():
        expected = model(images.to(torch.bfloat16)).logits.float().numpy()
    np.testing.assert_array_equal(predictions.logits, expected)
