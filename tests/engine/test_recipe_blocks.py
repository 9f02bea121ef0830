"""Recipe building blocks of the baselines: SGD, mmcv's step schedules with warm-up, frozen
ResNet stages, BatchNorm in eval mode, DB's PFC neck."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlcnc.config import OptimConfig, load_config
from mlcnc.engine.optim import (
    build_optimizer,
    build_scheduler,
    sgd_optimizer,
    step_lr_factor,
    step_lr_scheduler,
)
from mlcnc.models.backbone import batch_norm_layers, create_backbone
from mlcnc.models.linear import LinearHeadModel
from mlcnc.schema import ConfigError


# --------------------------------------------------------------------------- schedules
def lrs_of(steps: int, steps_per_epoch: int, base_lr: float = 0.02, **options) -> list[float]:
    """The lr of each of ``steps`` iterations, read from an optimizer the scheduler drives."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base_lr, momentum=0.9)
    scheduler = step_lr_scheduler(optimizer, steps_per_epoch, **options)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_db_schedule_values_by_hand() -> None:
    # DB VOC: 121 iterations per epoch, 8 epochs, warm-up 500 iterations from lr / 3.
    lrs = lrs_of(968, 121, milestones=[5, 7])
    expected = {
        0: 0.02 / 3,
        250: 0.02 * (1 - 0.5 * 2 / 3),
        499: 0.02 * (1 - (1 / 500) * 2 / 3),
        500: 0.02,
        604: 0.02,  # last iteration of epoch 4 (0-based)
        605: 0.002,  # epoch 5
        846: 0.002,
        847: 0.0002,  # epoch 7
        967: 0.0002,
    }
    for step, lr in expected.items():
        assert lrs[step] == pytest.approx(lr, rel=1e-9), step


def test_warmup_scales_the_decayed_lr_when_it_outlasts_a_milestone() -> None:
    # 50 iterations per epoch: iteration 260 is in epoch 5 and still warming up.
    assert step_lr_factor(260, 50, [5, 12]) == pytest.approx(0.1 * (1 - (1 - 260 / 500) * 2 / 3))
    assert step_lr_factor(499, 50, [5, 12]) == pytest.approx(0.1 * (1 - (1 / 500) * 2 / 3))
    assert step_lr_factor(500, 50, [5, 12]) == pytest.approx(0.1)


def test_other_warmups_and_step_forms() -> None:
    assert step_lr_factor(100, 10, [3], warmup="constant", warmup_iters=200) == pytest.approx(
        0.1 / 3
    )
    assert step_lr_factor(50, 10, [30], warmup="exp", warmup_iters=200, warmup_ratio=0.1) == (
        pytest.approx(0.1 ** (1 - 50 / 200))
    )
    assert step_lr_factor(25, 10, [30], warmup=None) == 1.0
    # An int is "every s epochs" (mmcv): epoch 7 with s = 3 -> two decays.
    assert step_lr_factor(75, 10, 3, warmup=None) == pytest.approx(0.01)
    # Milestones in iterations.
    assert step_lr_factor(99, 10, [100], warmup=None, by_epoch=False) == 1.0
    assert step_lr_factor(100, 10, [100], warmup=None, by_epoch=False) == pytest.approx(0.1)
    # Warm-up counted in epochs: 2 epochs of 10 iterations.
    assert step_lr_factor(10, 10, [5], warmup_iters=2, warmup_by_epoch=True) == pytest.approx(
        1 - 0.5 * 2 / 3
    )
    assert step_lr_factor(20, 10, [5], warmup_iters=2, warmup_by_epoch=True) == 1.0
    with pytest.raises(ValueError, match="increasing"):
        step_lr_factor(0, 10, [7, 5])
    with pytest.raises(ValueError, match="warmup must be one of"):
        step_lr_factor(0, 10, [5], warmup="cosine")


def test_scheduler_keeps_group_base_lrs() -> None:
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    optimizer = sgd_optimizer([{"params": [a], "lr": 0.01}, {"params": [b]}], lr=0.1)
    scheduler = step_lr_scheduler(optimizer, 10, [1], warmup=None)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.001, 0.01])


# --------------------------------------------------------------------------- SGD
def test_sgd_options_and_groups() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    opt = sgd_optimizer(model, lr=0.02, nesterov=True)
    (group,) = opt.param_groups
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (
        0.02,
        0.9,
        1e-4,
        True,
    )
    assert len(group["params"]) == 5  # the frozen weight is left out
    split = sgd_optimizer(model, lr=0.02, decay_norm_and_bias=False)
    decays = sorted((g["weight_decay"], len(g["params"])) for g in split.param_groups)
    assert decays == [(0.0, 4), (1e-4, 1)]  # biases and BN affine exempt
    with pytest.raises(ValueError, match="Nesterov"):
        sgd_optimizer(model, lr=0.1, momentum=0.0, nesterov=True)


# --------------------------------------------------------------------------- freezing
def train_step(model: nn.Module, images: torch.Tensor) -> None:
    optimizer = sgd_optimizer(model, lr=0.1)
    model.train()
    output = model(images)
    output = output.logits if hasattr(output, "logits") else output
    output.square().mean().backward()
    optimizer.step()


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_stages_get_no_gradient_and_stay_fixed() -> None:
    torch.manual_seed(0)
    model = LinearHeadModel("resnet18", False, num_classes=3, frozen_stages=1)
    backbone = model.backbone
    frozen = [backbone.conv1, backbone.bn1, backbone.layer1]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in backbone.layer2.parameters())
    before = {id(m): snapshot(m) for m in [*frozen, backbone.layer2]}
    model.train()
    assert not backbone.layer1.training and not backbone.bn1.training
    assert backbone.layer2.training
    train_step(model, torch.randn(4, 3, 16, 16))
    for m in frozen:  # weights and BN running statistics unchanged
        assert all(p.grad is None for p in m.parameters())
        after = snapshot(m)
        assert all(torch.equal(before[id(m)][k], after[k]) for k in after)
    moved = snapshot(backbone.layer2)
    assert not all(torch.equal(before[id(backbone.layer2)][k], moved[k]) for k in moved)


def test_norm_eval_keeps_statistics_and_affine_still_trains() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", False, norm_eval=True)
    backbone.train()
    assert backbone.training and all(not bn.training for bn in batch_norm_layers(backbone))
    stats = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    backbone(torch.randn(4, 3, 16, 16)).mean().backward()
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in stats.items())
    # mmdet's norm_eval leaves the BN affine parameters trainable ...
    assert backbone.layer3[0].bn1.weight.grad is not None
    # ... freeze_norm_affine stops them too.
    frozen = create_backbone("resnet18", False, norm_eval=True, freeze_norm_affine=True)
    assert all(not p.requires_grad for bn in batch_norm_layers(frozen) for p in bn.parameters())
    assert frozen.layer3[0].conv1.weight.requires_grad
    # Without the option BN statistics do move in train mode (the test can fail).
    plain = create_backbone("resnet18", False).train()
    before = plain.bn1.running_mean.clone()
    plain(torch.randn(4, 3, 16, 16))
    assert not torch.equal(before, plain.bn1.running_mean)


def test_freezing_options_are_refused_for_other_backbones() -> None:
    with pytest.raises(ValueError, match="options of the torchvision ResNets"):
        create_backbone("tf_efficientnet_lite0", False, frozen_stages=1)
    with pytest.raises(ValueError, match="frozen_stages must be in"):
        create_backbone("resnet18", False, frozen_stages=5)


# --------------------------------------------------------------------------- neck
def test_pfc_neck_matches_db_order_and_init() -> None:
    torch.manual_seed(0)
    model = LinearHeadModel(
        "resnet18", False, num_classes=3, dropout=0.5, neck_dim=8, classifier_init_std=0.01
    )
    assert isinstance(model.neck[0], nn.Linear) and model.neck[0].out_features == 8
    assert isinstance(model.neck[1], nn.BatchNorm1d)
    assert model.fc.in_features == 8 and torch.equal(model.fc.bias, torch.zeros(3))
    assert torch.equal(model.neck[0].bias, torch.zeros(8))
    model.eval()
    images = torch.randn(2, 3, 16, 16)
    pooled = model.backbone(images).mean(dim=(2, 3))
    expected = model.fc(model.neck[1](model.neck[0](pooled)))  # no ReLU, dropout off in eval
    assert torch.allclose(model(images).logits, expected, atol=1e-6)
    model.train()
    out = model(torch.randn(4, 3, 16, 16)).logits
    assert out.shape == (4, 3) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- published recipes
def _optim(**options) -> OptimConfig:
    return load_config("synthetic", [f"optim.{k}={v}" for k, v in options.items()]).optim


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_backbone_lr_scale_puts_the_backbone_at_a_tenth(optimizer: str) -> None:
    """ML-GCN's lrp: every backbone parameter at lr x 0.1, every other one at lr, under the
    constant schedule and at OneCycle's peak; nothing left out, nothing twice."""
    model = LinearHeadModel("resnet18", False, num_classes=3)
    cfg = _optim(optimizer=optimizer, lr=0.1, backbone_lr_scale=0.1, schedule="constant")
    opt = build_optimizer(model, cfg)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert sorted(lr_of) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    backbone = {id(p) for p in model.backbone.parameters()}
    for name, param in model.named_parameters():
        want = 0.01 if id(param) in backbone else 0.1
        assert lr_of[id(param)] == pytest.approx(want), name
    scheduler = build_scheduler(opt, cfg, steps_per_epoch=4)
    opt.step(), scheduler.step()
    assert sorted({round(g["lr"], 12) for g in opt.param_groups}) == pytest.approx([0.01, 0.1])
    one_cycle = build_scheduler(
        build_optimizer(model, _optim(optimizer=optimizer, lr=0.1, backbone_lr_scale=0.1)),
        _optim(lr=0.1, backbone_lr_scale=0.1),
        steps_per_epoch=4,
    )
    peaks = {g.get("lr_scale", 1.0): g["max_lr"] for g in one_cycle.optimizer.param_groups}
    assert peaks[0.1] == pytest.approx(0.01) and peaks[1.0] == pytest.approx(0.1)


def test_backbone_lr_scale_needs_a_backbone_module() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="no `backbone` module"):
        build_optimizer(model, _optim(backbone_lr_scale=0.1))
    build_optimizer(model, _optim())  # 1.0: nothing to split


def test_schedule_epochs_plans_onecycle_beyond_the_run() -> None:
    """ASL's train.py: OneCycle planned for 80 epochs, the run stops earlier; the LR at the
    stop is the 80-epoch plan's, not an annealed end."""
    cfg = _optim(epochs=2, schedule_epochs=8, lr=1e-3)
    param = nn.Parameter(torch.zeros(1))
    scheduler = build_scheduler(torch.optim.Adam([param], lr=1e-3), cfg, steps_per_epoch=5)
    assert scheduler.total_steps == 40
    plain = build_scheduler(torch.optim.Adam([param], lr=1e-3), _optim(epochs=8, lr=1e-3), 5)
    for _ in range(10):
        scheduler.optimizer.step(), scheduler.step()
        plain.optimizer.step(), plain.step()
    assert scheduler.get_last_lr() == pytest.approx(plain.get_last_lr())
    with pytest.raises(ConfigError, match="schedule_epochs"):
        _optim(epochs=5, schedule_epochs=4)
