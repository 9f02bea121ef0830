"""gpu_check's training step: the speed variants, the method builder, the sources of
batches (random pixels or a DataLoader) and ``train_run``, one timed training run of a
runner (``plain``, ``erm``, ``mlcnc``, the CLIP runners of ``gpu_check_clip.py``)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Variant:
    """Speed switches of one training run."""

    name: str
    channels_last: bool = False
    fused_adam: bool = False
    compile: bool = False
    cudnn_benchmark: bool = True
    sync_check: bool = True  # the engine's per-step finiteness .item() (engine runners only)


BASELINE = Variant("baseline")
NO_CUDNN_BENCH = Variant("no_cudnn_bench", cudnn_benchmark=False)
CHANNELS_LAST = Variant("channels_last", channels_last=True)
CL_FUSED = Variant("cl+fused", channels_last=True, fused_adam=True)
CL_FUSED_NO_SYNC = Variant(
    "cl+fused+no_sync", channels_last=True, fused_adam=True, sync_check=False
)
CL_FUSED_COMPILE = Variant("cl+fused+compile", channels_last=True, fused_adam=True, compile=True)


# --------------------------------------------------------------------------------------
# one training run


def long_tail(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class positive rates 0.3 ... 0.003 (COCO-LT-like) and training counts."""
    rates = 0.3 * np.geomspace(1.0, 0.01, num_classes)
    return rates, np.maximum((rates * 1909).astype(np.int64), 1)


def build(runner: str, args: argparse.Namespace):
    """The method of ``runner`` (``plain`` uses the ``erm`` model), seeded."""
    from mlcnc.methods import MethodConfig, build_method

    torch.manual_seed(0)
    name = "erm" if runner == "plain" else runner
    model_options = {"embed_dim": 16, "num_heads": 2} if args.dry_run and name == "mlcnc" else {}
    cfg = MethodConfig(name=name, backbone=args.backbone, pretrained=False, model=model_options)
    return build_method(cfg, args.num_classes, long_tail(args.num_classes)[1])


def synthetic_source(args: argparse.Namespace, device: torch.device) -> tuple[Any, Any]:
    """Four batches of random pixels and long-tailed targets, on ``device``."""
    generator = np.random.default_rng(0)
    rates, _ = long_tail(args.num_classes)
    torch.manual_seed(1)
    size = args.image_size
    images = torch.randn(4, args.batch_size, 3, size, size, device=device)
    targets = torch.from_numpy(
        (generator.random((4, args.batch_size, args.num_classes)) < rates).astype(np.float32)
    ).to(device)
    return images, targets


@dataclass
class LoaderSource:
    """Training batches from a DataLoader; uint8 batches are normalised on the device with
    ``mean`` and ``std`` (1, 3, 1, 1)."""

    loader: Any
    mean: torch.Tensor
    std: torch.Tensor


def batches(
    source: Any, device: torch.device, channels_last: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (images, targets) on ``device`` from synthetic tensors or a DataLoader
    (uint8 batches are normalised on the device)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if not isinstance(source, LoaderSource):
        images, targets = source
        images = [x.contiguous(memory_format=fmt) for x in images]
        step = 0
        while True:
            yield images[step % len(images)], targets[step % len(targets)]
            step += 1
    loader, mean, std = source.loader, source.mean, source.std
    while True:
        for images, targets, _ in loader:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if images.dtype == torch.uint8:
                images = images.float().div_(255).sub_(mean).div_(std)
            yield images.contiguous(memory_format=fmt), targets


def _autocast(device: torch.device, precision: str):
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def _adam(params: Any, variant: Variant, **kwargs: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, **kwargs, **({"fused": True} if variant.fused_adam else {}))


def train_run(
    runner: str,
    variant: Variant,
    args: argparse.Namespace,
    precision: str,
    source: Any = None,
    steps: int | None = None,
    build_fn: Any = None,
) -> dict[str, Any]:
    """``warmup + steps`` training steps of ``runner`` under ``variant``; img/s of the timed
    steps, peak memory, finiteness, losses. The warm-up steps form "epoch 0" (MLC-NC's
    prototypes are then computed), the timed ones "epoch 1" with every loss term on.
    ``build_fn(runner, args)``: the method (default ``build``)."""
    device = torch.device(args.device)
    gc.collect()  # the previous run's model and loader workers
    steps = args.steps if steps is None else steps
    torch.backends.cudnn.benchmark = variant.cudnn_benchmark
    method = (build_fn or build)(runner, args)
    net, criterion = method.model, method.criterion
    if hasattr(criterion, "warmup_epochs"):
        criterion.warmup_epochs = 0  # every term from the first step: the full cost
    if variant.channels_last:
        net = net.to(memory_format=torch.channels_last)
    compiled = torch.compile(net, backend=args.compile_backend) if variant.compile else net
    source = synthetic_source(args, device) if source is None else source
    total_steps = args.warmup_steps + steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    if runner == "plain":
        net.to(device)
        optimizer = _adam(net.parameters(), variant, lr=1e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=precision.startswith("16"))

        def step_fn(images: torch.Tensor, targets: torch.Tensor, step: int) -> dict:
            with _autocast(device, precision):
                logits = compiled(images).logits
            loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            return {"total": loss.detach()}

    else:
        from lightning.fabric import Fabric
        from timm.utils import ModelEmaV3

        from mlcnc.config import OptimConfig
        from mlcnc.engine.optim import build_scheduler, parameter_groups
        from mlcnc.engine.task import ModelWithLoss

        fabric = Fabric(accelerator=device.type, devices=1, precision=precision)
        optim_cfg = OptimConfig(epochs=2)
        optimizer = _adam(
            parameter_groups(net, optim_cfg.weight_decay),
            variant,
            lr=optim_cfg.lr,
            betas=optim_cfg.betas,
            eps=optim_cfg.eps,
        )
        scheduler = build_scheduler(optimizer, optim_cfg, max(total_steps // 2, 1) + 1)
        model, optimizer_f = fabric.setup(ModelWithLoss(compiled, criterion), optimizer)
        criterion.to(fabric.device)
        ema = ModelEmaV3(net, decay=0.9997)
        term_sums: dict[str, torch.Tensor] = {}

        def step_fn(images: torch.Tensor, targets: torch.Tensor, step: int) -> dict:
            losses = model(images, targets)
            if variant.sync_check:  # the engine's per-step check: a host-device sync
                bool(torch.isfinite(losses["total"]).item())
            optimizer_f.zero_grad(set_to_none=True)
            fabric.backward(losses["total"])
            optimizer_f.step()
            scheduler.step()
            ema.update(net, step=step + 1)
            for name, value in losses.items():
                term_sums[name] = term_sums.get(name, 0.0) + value.detach()
            return losses

    net.train()
    criterion.train()
    criterion.set_epoch(0)
    totals, started, warm_started = [], None, time.perf_counter()
    warmup_s = float("nan")
    losses: dict = {}
    stream = batches(source, device, variant.channels_last)
    for step in range(total_steps):
        if step == args.warmup_steps:
            _sync(device)
            warmup_s = time.perf_counter() - warm_started
            criterion.end_epoch(None)  # prototypes from the warm-up steps
            criterion.set_epoch(1)
            started = time.perf_counter()
        images, targets = next(stream)
        losses = step_fn(images, targets, step)
        totals.append(losses["total"].detach())
    _sync(device)
    seconds = time.perf_counter() - started if started is not None else float("nan")
    history = torch.stack(totals).float().cpu()
    result = {
        "runner": runner,
        "variant": variant.name,
        "switches": dataclasses.asdict(variant),
        "precision": precision,
        "steps": steps,
        "img_per_s": steps * args.batch_size / seconds if seconds > 0 else float("nan"),
        "warmup_s": warmup_s,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else float("nan"),
        "finite": bool(torch.isfinite(history).all()),
        "first_loss": float(history[0]),
        "last_loss": float(history[-1]),
        "terms": {k: float(v.detach().float()) for k, v in losses.items()},
    }
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
