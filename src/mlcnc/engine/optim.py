"""Adam with the official parameter groups, and the per-step OneCycle schedule (spec B4)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from mlcnc.config import OptimConfig


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


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam with coupled L2 (``torch.optim.Adam``'s weight_decay, not AdamW), as the code does."""
    if cfg.optimizer != "adam":
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose 'adam'")
    return torch.optim.Adam(
        parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """OneCycle over ``epochs * steps_per_epoch`` optimizer steps, stepped every iteration."""
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=cfg.lr,
        total_steps=cfg.epochs * steps_per_epoch,
        pct_start=cfg.pct_start,
        anneal_strategy="cos",
        div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor,
        cycle_momentum=cfg.cycle_momentum,
        base_momentum=cfg.base_momentum,
        max_momentum=cfg.max_momentum,
    )


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
