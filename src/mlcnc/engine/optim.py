"""Adam with the official parameter groups and the per-step OneCycle schedule (spec B4);
SGD and mmcv's step / multi-step schedules with warm-up for the baselines' recipes; LMPT's
plateau schedule (``PlateauLR``, stepped per evaluation on the val selection metric)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from mlcnc.config import OptimConfig
from mlcnc.schema import ConfigError


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: L2 ``weight_decay`` on trainable tensors that are not 1-D and whose name
    does not end in ``.bias``; no decay on the rest (norm weights, biases, temperatures).

    Buffers (MLC-NC's fixed ETF classifier and label queries in the paper recipe) are not
    parameters and so never reach the optimizer.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, fused: bool = False
) -> torch.optim.Optimizer:
    """``optim.optimizer``: Adam with coupled L2 (``torch.optim.Adam``'s weight_decay, not
    AdamW) on the official code's groups, as MLC-NC's code does (``fused``: one fused kernel
    for all parameters, for CUDA); or SGD with momentum and decay on every parameter, as
    DB's mmcv recipe does (``sgd_optimizer``). ``backbone_lr_scale`` splits each group into
    the backbone's part, at lr x scale, and the rest (``scaled_backbone_groups``)."""
    if cfg.optimizer == "sgd":
        groups = [{"params": list(model.parameters())}]  # sgd_optimizer drops frozen ones
    elif cfg.optimizer == "adamw":  # LM-CLIP: decay on every trainable parameter
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    else:
        groups = parameter_groups(model, cfg.weight_decay)
    if cfg.backbone_lr_scale != 1.0:
        groups = scaled_backbone_groups(model, groups, cfg.lr, cfg.backbone_lr_scale)
    if cfg.optimizer == "sgd":
        return sgd_optimizer(groups, cfg.lr, cfg.momentum, cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.optimizer == "adamw":  # LM-CLIP: AdamW, decay on every parameter
        return torch.optim.AdamW(
            groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(
        groups,
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        # One fused kernel for all parameters on CUDA (the foreach default elsewhere).
        fused=True if fused else None,
    )


def scaled_backbone_groups(
    model: nn.Module, groups: list[dict], lr: float, scale: float
) -> list[dict]:
    """Each group split in two: the parameters of ``model.backbone`` with ``lr`` x ``scale``
    (and ``lr_scale`` recorded for the schedules), the others unchanged; empty parts dropped.
    A model without a ``backbone`` module is refused (there is nothing to scale)."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ConfigError(
            f"optim.backbone_lr_scale={scale}: the {type(model).__name__} has no `backbone` "
            "module to scale (two-branch models split theirs); leave it at 1.0"
        )
    in_backbone = {id(p) for p in backbone.parameters()}
    split: list[dict] = []
    for group in groups:
        inside = [p for p in group["params"] if id(p) in in_backbone]
        outside = [p for p in group["params"] if id(p) not in in_backbone]
        if inside:
            split.append({**group, "params": inside, "lr": lr * scale, "lr_scale": scale})
        if outside:
            split.append({**group, "params": outside})
    return split


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """``optim.schedule``, stepped every iteration: OneCycle over ``planned_epochs *
    steps_per_epoch`` steps (``schedule_epochs`` or ``epochs``), a constant lr, or mmcv's
    step policy (``step_lr_scheduler``: x ``gamma`` at each epoch of ``milestones``, after a
    warm-up of ``warmup_iters`` iterations)."""
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if cfg.schedule == "cosine":  # per epoch, as CosineAnnealingLR(T_max=epochs, eta_min=0)
        planned = cfg.planned_epochs
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: 0.5 * (1.0 + math.cos(math.pi * (step // steps_per_epoch) / planned)),
        )
    if cfg.schedule == "plateau":  # per evaluation, on the val selection metric (LMPT)
        return PlateauLR(
            optimizer, mode="max", factor=cfg.gamma, patience=cfg.plateau_patience,
            min_lr=cfg.plateau_min_lr,
        )  # fmt: skip
    if cfg.schedule == "step":
        return step_lr_scheduler(
            optimizer,
            steps_per_epoch,
            list(cfg.milestones),
            gamma=cfg.gamma,
            warmup=None if cfg.warmup == "none" else cfg.warmup,
            warmup_iters=cfg.warmup_iters,
            warmup_ratio=cfg.warmup_ratio,
        )
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        # Each group's maximum: lr, or lr x backbone_lr_scale for the backbone's groups.
        max_lr=[cfg.lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups],
        total_steps=cfg.planned_epochs * steps_per_epoch,
        pct_start=cfg.pct_start,
        anneal_strategy="cos",
        div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor,
        cycle_momentum=cfg.cycle_momentum,
        base_momentum=cfg.base_momentum,
        max_momentum=cfg.max_momentum,
    )


class PlateauLR(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """``ReduceLROnPlateau`` (LMPT: mode max, patience 5, factor 0.1, min_lr 1e-7) under the
    loop's per-step ``step()``, which does nothing here: the loop calls ``step_on_metric``
    after each evaluation with the val value of ``train.select_metric``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.missing_noted = False

    def step(self, metrics: float | None = None, epoch: int | None = None) -> None:  # type: ignore[override]
        if metrics is not None:
            super().step(metrics)

    def step_on_metric(self, value: float | None, name: str) -> str | None:
        """Step on ``value``; without one (no val split), a note the first time."""
        if value is not None:
            self.step(float(value))
            return None
        if self.missing_noted:
            return None
        self.missing_noted = True
        return (
            f"optim.schedule=plateau steps on {name}, which this run does not have (no val "
            "split): the lr stays constant; give a val split (e.g. data.val_csv)"
        )


# --------------------------------------------------------------------------- SGD recipes
ParamsOrModel = nn.Module | list[dict]


def sgd_optimizer(
    params: ParamsOrModel,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = False,
    decay_norm_and_bias: bool = True,
) -> torch.optim.SGD:
    """SGD with momentum (optionally Nesterov) and coupled weight decay.

    ``params``: a model (its trainable parameters) or a list of parameter groups (dicts with
    ``params`` and optional ``lr``, ``weight_decay``: e.g. ML-GCN's backbone group at lr * 0.1).
    ``decay_norm_and_bias``: True puts ``weight_decay`` on every trainable parameter, as
    mmcv's default optimizer builder does for DB's ``optimizer = dict(type='SGD', lr=0.02,
    momentum=0.9, weight_decay=0.0001)`` (``DB: mllt/apis/train.py``, ``build_optimizer``
    without paramwise_options); False exempts 1-D tensors and biases (``parameter_groups``).
    Frozen parameters (``requires_grad=False``) are left out.
    The gradient-norm clip of DB's recipe (``optimizer_config = dict(grad_clip=dict(
    max_norm=35, norm_type=2))``) is the engine's ``optim.grad_clip`` (Fabric's
    ``clip_gradients``), not part of the optimizer.
    """
    if lr <= 0:
        raise ValueError(f"sgd_optimizer: lr must be positive, got {lr}")
    if nesterov and momentum <= 0:
        raise ValueError("sgd_optimizer: Nesterov momentum needs momentum > 0")
    if isinstance(params, nn.Module):
        if decay_norm_and_bias:
            groups = [{"params": [p for p in params.parameters() if p.requires_grad]}]
        else:
            groups = parameter_groups(params, weight_decay)
    else:
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("sgd_optimizer: no trainable parameter")
    return torch.optim.SGD(
        groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )


WARMUPS = (None, "constant", "linear", "exp")


def step_lr_factor(
    iteration: int,
    steps_per_epoch: int,
    milestones: int | list[int] | tuple[int, ...],
    gamma: float = 0.1,
    warmup: str | None = "linear",
    warmup_iters: int = 500,
    warmup_ratio: float = 1.0 / 3.0,
    warmup_by_epoch: bool = False,
    by_epoch: bool = True,
) -> float:
    """The learning-rate factor (lr / base lr) of mmcv's ``step`` policy at ``iteration``.

    The defaults with ``milestones=[5, 7]`` are DB's ``lr_config = dict(policy='step',
    warmup='linear', warmup_iters=500, warmup_ratio=1.0 / 3, step=[5, 7])`` (``DB: configs/
    */LT_resnet50_pfc_DB.py``; lr 0.02, 8 epochs); the formulas are mmcv 1.0's
    ``StepLrUpdaterHook.get_lr`` and ``LrUpdaterHook.get_warmup_lr`` / ``before_train_iter``
    (``mmcv: mmcv/runner/hooks/lr_updater.py``):

    - regular factor: gamma^k, k = number of milestones <= progress, where progress is the
      0-based epoch ``iteration // steps_per_epoch`` (``by_epoch``) or the iteration itself;
      an int ``milestones`` s means every s: k = progress // s;
    - warm-up for iteration t < W (W = ``warmup_iters`` iterations, or that many epochs with
      ``warmup_by_epoch``): ``linear`` regular * (1 - (1 - t/W)(1 - ratio)), ``constant``
      regular * ratio, ``exp`` regular * ratio^(1 - t/W); from t = W on, the regular factor.
    ``iteration`` is the 0-based optimizer step (what ``LambdaLR`` passes).
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if warmup not in WARMUPS:
        raise ValueError(f"warmup must be one of {WARMUPS}, got {warmup!r}")
    if warmup is not None and (warmup_iters <= 0 or not 0.0 < warmup_ratio <= 1.0):
        raise ValueError(
            f"warm-up needs warmup_iters > 0 and 0 < warmup_ratio <= 1, got {warmup_iters}, "
            f"{warmup_ratio}"
        )
    progress = iteration // steps_per_epoch if by_epoch else iteration
    if isinstance(milestones, int):
        if milestones <= 0:
            raise ValueError(f"a step milestone must be positive, got {milestones}")
        exponent = progress // milestones
    else:
        if sorted(milestones) != list(milestones) or any(m <= 0 for m in milestones):
            raise ValueError(f"milestones must be positive and increasing, got {milestones}")
        exponent = sum(1 for m in milestones if progress >= m)
    regular = gamma**exponent
    length = warmup_iters * steps_per_epoch if warmup_by_epoch else warmup_iters
    if warmup is None or iteration >= length:
        return regular
    fraction = iteration / length
    if warmup == "linear":
        return regular * (1.0 - (1.0 - fraction) * (1.0 - warmup_ratio))
    if warmup == "constant":
        return regular * warmup_ratio
    return regular * warmup_ratio ** (1.0 - fraction)


def step_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    milestones: int | list[int] | tuple[int, ...],
    gamma: float = 0.1,
    warmup: str | None = "linear",
    warmup_iters: int = 500,
    warmup_ratio: float = 1.0 / 3.0,
    warmup_by_epoch: bool = False,
    by_epoch: bool = True,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Step / multi-step decay with warm-up (``step_lr_factor``), stepped every iteration.

    Every parameter group keeps its own base lr (ML-GCN's lr-scaled backbone group too).
    """
    step_lr_factor(0, steps_per_epoch, milestones, gamma, warmup, warmup_iters, warmup_ratio)

    def factor(iteration: int) -> float:
        return step_lr_factor(
            iteration, steps_per_epoch, milestones, gamma, warmup, warmup_iters,
            warmup_ratio, warmup_by_epoch, by_epoch,
        )  # fmt: skip

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_scheduler_at(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, step: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """``build_scheduler``'s schedule for the whole of ``cfg.epochs``, positioned after
    ``step`` optimizer steps: how an extended run continues (the same schedule shape
    stretched to the new total; the LR at ``step`` is the new plan's, not the old one's).
    Sets the optimizer's LR (and OneCycle's momentum) for that step."""
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    if step > 0:
        scheduler.last_epoch = step - 1
        with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()"
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
    return scheduler
