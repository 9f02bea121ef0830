"""GPU smoke and speed check (one prepared run, under 8 minutes on an H200: ``--budget-s 450``).

Sections, in this order (each is skipped, and says so, when the time budget ``--budget-s``
would not fit it):

1. ``synthetic``: training steps on random pixels made on the GPU (no data loading), ResNet-50
   at 224 px, batch 64, bf16 autocast, for three runners:
   ``plain``  a plain timm-style loop: the ``erm`` model (backbone + linear head), BCE,
              ``torch.optim.Adam``, autocast; no Fabric, EMA, schedule or per-step check;
   ``erm``    the engine's step (Fabric precision, ``ModelWithLoss``, Adam with the engine's
              parameter groups, OneCycle, EMA, the per-step finiteness ``.item()``);
   ``mlcnc``  the same step for MLC-NC (every loss term on, prototypes valid when timed);
   each in variants: ``baseline`` (cudnn.benchmark on, the engine today), ``no_cudnn_bench``,
   ``channels_last``, ``cl+fused`` (channels_last and ``Adam(fused=True)``), and for ``erm``
   ``cl+fused+no_sync`` (without the per-step ``.item()``). Prints img/s, peak GPU memory,
   ratios against ``plain`` of the same variant and MLC-NC / ERM.
2. ``fp16``: MLC-NC under 16-mixed (GradScaler) must stay finite too (GPUs without bf16).
3. ``data``: the real input pipeline on photo-sized JPEGs written by
   ``benchmarks/bench_data.py`` (500 x 375, quality 90), with ``--workers`` (default: every
   core) DataLoader workers and pinned memory: the loader alone (the engine's transform,
   and a uint8 variant normalised on the GPU), then ``erm`` and ``mlcnc`` training through
   it (img/s against the synthetic-tensor rate: is the GPU starved?).
4. ``decode``: nvJPEG batch decoding on the GPU (``torchvision.io.decode_jpeg(device=)``)
   of the same files, img/s (a possible future path).
5. ``gather``: runs ``benchmarks/bench_gather.py`` (the DDP exactness work's gather cost)
   when that script exists, with ``--gather-args``, and keeps its output.
6. ``clip``: LM-CLIP and MLC-NC on CLIP (variant C) against the linear head on the same
   CLIP ViT-B/16 tower (open_clip ``ViT-B-16-quickgelu``, random weights, 224 px): training
   and inference img/s, peak memory, and the text tower's calls per step, which must be 0
   at inference (``benchmarks/gpu_check_clip.py``).
7. ``compile``: ``torch.compile`` of the model (``cl+fused+compile``) for ``erm`` and
   ``mlcnc`` (and ``plain`` if time is left), each in a subprocess with a timeout, so a slow
   compilation cannot overrun the budget; reports the warm-up (compile) time too.

Ends with a compact table; every figure goes to ``--json`` (default ``$OUT/gpu_check.json``
when ``$OUT`` is set). Exits 1 if a loss became non-finite or a required run failed.
Without CUDA it prints SKIP and exits 0. ``--dry-run`` (with ``--device cpu``) runs every
section with a tiny model, tiny images and two steps in seconds: that is how it is tested.
Deterministic: seeded weights, pixels and labels. No downloads (``pretrained=False``).

    python benchmarks/gpu_check.py [--steps 60] [--budget-s 450] [--sections synthetic,data]
    python benchmarks/gpu_check.py --device cpu --dry-run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
SECTIONS = ("synthetic", "fp16", "data", "decode", "gather", "clip", "compile")


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

# Rough wall time of one run on an H200, to decide what still fits the budget.
COST_S = {"train": 8.0, "compile": 110.0, "data": 60.0, "decode": 10.0, "gather": 60.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60, help="timed steps per run")
    parser.add_argument("--warmup-steps", type=int, default=15, help="untimed first steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=80, help="80 = COCO-LT")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--precision", default="auto", help="auto, bf16-mixed, 16-mixed, 32-true")
    parser.add_argument("--device", default="cuda", help="cuda (cpu only to test the script)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip what would not fit")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (all cores)")
    parser.add_argument("--jpeg-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--num-jpegs", type=int, default=1024)
    parser.add_argument("--jpeg-size", default="500x375", help="WIDTHxHEIGHT")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--gather-args", default=None, help="arguments for bench_gather.py")
    parser.add_argument("--gather-script", type=Path, default=HERE / "bench_gather.py")
    parser.add_argument("--json", type=Path, default=None, help="default $OUT/gpu_check.json")
    parser.add_argument("--dry-run", action="store_true", help="tiny everything (a test)")
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)  # RUNNER:variant-json
    args = parser.parse_args(argv)
    if args.dry_run:
        args.steps, args.warmup_steps, args.batch_size = 2, 1, 4
        args.image_size, args.num_classes, args.backbone = 32, 6, "test_efficientnet"
        args.num_jpegs, args.jpeg_size = 8, "64x48"
        args.compile_backend = "eager"
        args.workers = 2 if args.workers is None else args.workers
    if args.workers is None:
        args.workers = len(os.sched_getaffinity(0))
    if args.gather_args is None:
        args.gather_args = "--help" if args.dry_run else ""
    return args


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


def run_in_subprocess(
    runner: str, variant: Variant, args: argparse.Namespace, precision: str, timeout: float
) -> dict[str, Any]:
    """``train_run`` in a fresh process (a compile that overruns is killed, not waited for)."""
    argv = [sys.executable, str(Path(__file__).resolve()), *sys_args(args), "--precision",
            precision, "--single", f"{runner}:{json.dumps(dataclasses.asdict(variant))}"]  # fmt: skip
    started = time.perf_counter()
    env = dict(os.environ)  # this tree's sources first, as gpu_check.sh does
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE.parent / "src"), env.get("PYTHONPATH")])
    )
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=max(timeout, 1), env=env
        )
    except subprocess.TimeoutExpired:
        return _failed(runner, variant, f"timed out after {timeout:.0f} s")
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            result["process_s"] = time.perf_counter() - started
            return result
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return _failed(runner, variant, f"exit {done.returncode}: {' | '.join(tail)}")


def sys_args(args: argparse.Namespace) -> list[str]:
    """The options that shape a run, to hand to a subprocess."""
    out = ["--device", args.device, "--compile-backend", args.compile_backend]
    if args.dry_run:
        return [*out, "--dry-run"]
    return [
        *out,
        "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
        "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
        "--num-classes", str(args.num_classes), "--backbone", args.backbone,
    ]  # fmt: skip


def _failed(runner: str, variant: Variant, why: str) -> dict[str, Any]:
    return {"runner": runner, "variant": variant.name, "error": why, "img_per_s": float("nan")}


# --------------------------------------------------------------------------------------
# sections


class Budget:
    """Wall-clock budget: what still fits."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.started = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)

    def fits(self, cost: float) -> bool:
        return self.left() >= cost


def section_synthetic(args, precision, budget, report) -> None:
    plan = [(r, v) for v in (BASELINE, NO_CUDNN_BENCH, CHANNELS_LAST, CL_FUSED) for r in
            ("plain", "erm", "mlcnc")] + [("erm", CL_FUSED_NO_SYNC)]  # fmt: skip
    if args.dry_run:  # every runner and every switch once (the same code paths, fewer runs)
        plan = [(r, BASELINE) for r in ("plain", "erm", "mlcnc")]
        plan += [("erm", v) for v in (NO_CUDNN_BENCH, CHANNELS_LAST, CL_FUSED, CL_FUSED_NO_SYNC)]
        plan += [("plain", CL_FUSED), ("mlcnc", CL_FUSED)]
    for runner, variant in plan:
        if not budget.fits(COST_S["train"]):
            report.skip(f"synthetic {runner} {variant.name}")
            continue
        report.add("synthetic", guarded(train_run, runner, variant, args, precision))


def section_fp16(args, precision, budget, report) -> None:
    fp16 = "16-mixed" if args.device == "cuda" else "32-true"  # CPU: only the code path
    if args.device == "cuda" and precision != "bf16-mixed":
        return  # already the run precision
    if not budget.fits(COST_S["train"]):
        report.skip("fp16")
        return
    steps = max(args.steps // 2, 2)
    report.add("fp16", guarded(train_run, "mlcnc", BASELINE, args, fp16, steps=steps))


def section_data(args, precision, budget, report) -> None:
    if not budget.fits(COST_S["data"]):
        report.skip("data")
        return
    sys.path.insert(0, str(HERE))
    from bench_data import DecodeDataset, pipeline_transforms

    from mlcnc.data import build_dataset, read_csv_split
    from mlcnc.data.dataset import read_image
    from mlcnc.data.transforms import build_transforms
    from mlcnc.recipes import get_recipe

    device = torch.device(args.device)
    started = time.perf_counter()
    width, height, folder = jpeg_folder(args)
    split = read_csv_split(folder / "train.csv")
    written_s = time.perf_counter() - started
    args = copy.copy(args)
    args.num_classes = split.num_classes  # the models must fit the files' labels
    sizes = [p.stat().st_size for p in split.image_paths]
    report.note(
        f"data: {len(split)} training JPEGs {width}x{height} q90, mean "
        f"{np.mean(sizes) / 1024:.0f} KB, written in {written_s:.1f} s; "
        f"{args.workers} workers"
    )
    mean, std = (get_recipe("paper").mean, get_recipe("paper").std)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    pipelines = {
        "engine": build_dataset(split, build_transforms("paper", args.image_size, train=True)),
        "uint8": DecodeDataset(
            split, read_image, pipeline_transforms("paper", args.image_size)["uint8_out"]
        ),
    }
    pin = device.type == "cuda"

    def loader(name: str, num_batches: int):
        from torch.utils.data import DataLoader, RandomSampler

        dataset = pipelines[name]
        sampler = RandomSampler(
            dataset, replacement=True, num_samples=num_batches * args.batch_size
        )
        return DataLoader(
            dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True,
            num_workers=args.workers, pin_memory=pin,
        )  # fmt: skip

    loader_steps = max(args.steps, 3) if args.dry_run else 3 * args.steps
    for name in pipelines:
        count, t0 = 0, None
        for i, (images, _, _) in enumerate(loader(name, loader_steps + 1)):
            if i == 0:
                t0 = time.perf_counter()  # workers started, first batch out
                continue
            images.to(device, non_blocking=True)
            count += images.shape[0]
        _sync(device)
        rate = count / (time.perf_counter() - t0)
        report.add(
            "data",
            {"runner": "loader", "variant": name, "img_per_s": rate,
             "per_worker": rate / max(args.workers, 1), "finite": True},
        )  # fmt: skip
    total = args.warmup_steps + args.steps
    for runner, variant, name in (("erm", CL_FUSED, "engine"), ("mlcnc", CL_FUSED, "engine"),
                                  ("mlcnc", CL_FUSED, "uint8"), ("mlcnc", BASELINE, "engine")):  # fmt: skip
        if not budget.fits(COST_S["train"]):
            report.skip(f"data {runner} {variant.name} {name}")
            continue
        source = LoaderSource(loader(name, total), mean_t, std_t)
        result = guarded(train_run, runner, variant, args, precision, source=source)
        result["variant"] = f"{variant.name} ({name} loader)"
        report.add("data", result)


def section_decode(args, precision, budget, report) -> None:
    """nvJPEG batch decoding of photo-sized files (the CPU decoder in a dry run)."""
    if not budget.fits(COST_S["decode"]):
        report.skip("decode")
        return
    from torchvision.io import decode_jpeg, read_file

    _, _, folder = jpeg_folder(args)
    files = sorted((Path(folder) / "images").glob("*.jpg"))[: 4 * args.batch_size]
    data = [read_file(str(p)) for p in files]
    try:
        decode_jpeg(data[: args.batch_size], device=args.device)  # warm-up (handles)
        _sync(torch.device(args.device))
        t0 = time.perf_counter()
        for i in range(0, len(data), args.batch_size):
            decode_jpeg(data[i : i + args.batch_size], device=args.device)
        _sync(torch.device(args.device))
        rate = len(data) / (time.perf_counter() - t0)
        report.add("decode", {"runner": "decode_jpeg", "variant": args.device,
                              "img_per_s": rate, "finite": True})  # fmt: skip
    except (RuntimeError, TypeError) as err:
        report.add("decode", _failed("decode_jpeg", Variant(args.device), str(err)))


TINY_SCENES = {"num_classes": 3, "train_max_count": 4, "train_min_count": 1,
               "val_per_class": 1, "test_per_class": 1, "image_size": 32}  # fmt: skip


def jpeg_folder(args: argparse.Namespace) -> tuple[int, int, Path]:
    """(width, height, folder) of the photo-sized JPEG dataset, written on first use."""
    sys.path.insert(0, str(HERE))
    from bench_data import write_jpeg_dataset

    width, height = (int(x) for x in args.jpeg_size.split("x"))
    scenes = TINY_SCENES if args.dry_run else None
    write_jpeg_dataset(
        args.jpeg_dir, args.num_jpegs, width, height, 90, processes=args.workers,
        scene_config=scenes,
    )  # fmt: skip
    return width, height, Path(args.jpeg_dir)


def section_compile(args, precision, budget, report) -> None:
    for runner in ("erm", "mlcnc", "plain"):
        if args.dry_run and runner != "mlcnc":
            continue  # one subprocess is enough to test the path
        if not budget.fits(COST_S["compile"]):
            report.skip(f"compile {runner}")
            continue
        timeout = min(budget.left() - 5, 2.5 * COST_S["compile"])
        report.add("compile", run_in_subprocess(runner, CL_FUSED_COMPILE, args, precision, timeout))


def section_gather(args, precision, budget, report) -> None:
    script = args.gather_script
    if not script.is_file():
        report.note(f"gather: {script} not present; skipped")
        return
    if not budget.fits(COST_S["gather"] / 3):
        report.skip("gather")
        return
    argv = [sys.executable, str(script), *shlex.split(args.gather_args)]
    timeout = min(budget.left() - 5, COST_S["gather"])
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=max(timeout, 1))
        output, rc = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as err:
        output, rc = f"{err.stdout or ''}\ntimed out after {timeout:.0f} s", -1
    tail = output.strip().splitlines()[-25:]
    report.gather = {"argv": argv[1:], "rc": rc, "seconds": time.perf_counter() - started,
                     "tail": tail}  # fmt: skip
    report.note(f"gather: {' '.join(argv[1:])} -> exit {rc} in {report.gather['seconds']:.1f} s")
    for line in tail:
        report.note(f"  | {line}")


def section_clip(args, precision, budget, report) -> None:
    """LM-CLIP and MLC-NC against the linear head on CLIP ViT-B/16 (gpu_check_clip.py)."""
    sys.path.insert(0, str(HERE))
    from gpu_check_clip import section_clip as clip

    clip(args, precision, budget, report, sys.modules[__name__])


def guarded(fn, *a, **k) -> dict[str, Any]:
    """Run one measurement; an exception becomes an ``error`` row, not a crash."""
    try:
        return fn(*a, **k)
    except Exception as err:  # reported in the table and the exit code
        return _failed(a[0], a[1], f"{type(err).__name__}: {err}")


# --------------------------------------------------------------------------------------
# report


class Report:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.skipped: list[str] = []
        self.gather: dict[str, Any] | None = None

    def add(self, section: str, row: dict[str, Any]) -> None:
        row = {"section": section, **row}
        self.rows.append(row)
        print(_row_line(row), flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(text, flush=True)

    def skip(self, what: str) -> None:
        self.skipped.append(what)
        print(f"skipped (time budget): {what}", flush=True)

    def find(self, section: str, runner: str, variant: str) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in self.rows
                if (r["section"], r["runner"], r["variant"]) == (section, runner, variant)
            ),
            None,
        )

    def ratios(self) -> dict[str, float]:
        out = {}
        for row in self.rows:
            if row["section"] not in ("synthetic", "compile") or "error" in row:
                continue
            plain = self.find(row["section"], "plain", row["variant"])
            erm = self.find(row["section"], "erm", row["variant"])
            key = f"{row['section']}/{row['runner']}/{row['variant']}"
            if plain and row["runner"] != "plain":
                out[f"{key}/vs_plain"] = row["img_per_s"] / plain["img_per_s"]
            if erm and row["runner"] == "mlcnc":
                out[f"{key}/vs_erm"] = row["img_per_s"] / erm["img_per_s"]
            base = self.find(row["section"], row["runner"], "baseline") or self.find(
                "synthetic", row["runner"], "baseline"
            )
            if base and base is not row:
                out[f"{key}/vs_baseline"] = row["img_per_s"] / base["img_per_s"]
        for row in self.rows:
            if (
                row["section"] == "data"
                and row["runner"] in ("erm", "mlcnc")
                and "error" not in row
            ):
                variant = row["variant"].split(" (")[0]
                synth = self.find("synthetic", row["runner"], variant)
                if synth:
                    key = f"data/{row['runner']}/{row['variant']}/vs_synthetic"
                    out[key] = row["img_per_s"] / synth["img_per_s"]
        return out

    def table(self) -> str:
        ratios = self.ratios()
        head = f"{'section':<9} {'runner':<11} {'variant':<28} {'img/s':>8} {'peak GiB':>8} {'vs plain':>8} {'vs erm':>7} {'vs base':>7}"
        lines = [head, "-" * len(head)]
        for row in self.rows:
            key = f"{row['section']}/{row['runner']}/{row['variant']}"
            cells = [
                f"{row['section']:<9} {row['runner']:<11} {row['variant'][:28]:<28}",
                f"{row.get('img_per_s', math.nan):>8.1f} {row.get('peak_gib', math.nan):>8.2f}",
            ]
            for suffix, width in (("vs_plain", 8), ("vs_erm", 7), ("vs_baseline", 7)):
                value = ratios.get(f"{key}/{suffix}")
                cells.append(
                    f"{value:>{width}.3f}" if value is not None else " " * (width - 1) + "-"
                )
            line = " ".join(cells)
            if "error" in row:
                line += f"  ERROR {row['error'][:80]}"
            elif "warmup_s" in row and row["switches"].get("compile"):
                line += f"  (warm-up/compile {row['warmup_s']:.0f} s)"
            lines.append(line)
        for row in self.rows:
            key = f"data/{row['runner']}/{row['variant']}/vs_synthetic"
            if key in ratios:
                lines.append(
                    f"{row['runner']} {row['variant']}: x{ratios[key]:.3f} of its synthetic-tensor rate"
                )
        return "\n".join(lines)


def _row_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"[{row['section']}] {row['runner']} {row['variant']}: ERROR {row['error']}"
    extra = (
        f", peak {row['peak_gib']:.2f} GiB" if not math.isnan(row.get("peak_gib", math.nan)) else ""
    )
    extra += f", {row['per_worker']:.1f} per worker" if "per_worker" in row else ""
    extra += f", warm-up {row['warmup_s']:.1f} s" if "warmup_s" in row else ""
    extra += "" if row.get("finite", True) else ", NON-FINITE LOSS"
    return (
        f"[{row['section']}] {row['runner']} {row['variant']}: {row['img_per_s']:.1f} img/s{extra}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("SKIP: no CUDA device found; gpu_check needs a CUDA GPU (nothing was run).")
        return 0
    precision = args.precision
    if precision == "auto":
        cuda = args.device == "cuda"
        precision = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"
    if args.single is not None:  # one run for run_in_subprocess
        runner, variant_json = args.single.split(":", 1)
        variant = Variant(**json.loads(variant_json))
        print("RESULT " + json.dumps(guarded(train_run, runner, variant, args, precision)))
        return 0
    if args.device == "cpu":
        torch.set_num_threads(1)  # a tiny model on a shared CPU: one thread is steadiest
    budget = Budget(args.budget_s)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    cores = len(os.sched_getaffinity(0))
    print(
        f"device: {device_name}, {cores} cores, torch {torch.__version__}; {args.backbone}, "
        f"{args.image_size} px, batch {args.batch_size}, {args.num_classes} classes, "
        f"precision {precision}, {args.steps} timed steps after {args.warmup_steps}, "
        f"budget {args.budget_s:.0f} s",
        flush=True,
    )
    report = Report()
    wanted = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        print(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
        return 2
    functions = {"synthetic": section_synthetic, "fp16": section_fp16, "data": section_data,
                 "decode": section_decode, "compile": section_compile, "gather": section_gather,
                 "clip": section_clip}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        if args.jpeg_dir is None:
            args.jpeg_dir = Path(tmp) / "jpegs"
        for name in SECTIONS:
            if name in wanted:
                functions[name](args, precision, budget, report)
    print("\n" + report.table())
    if report.skipped:
        print(f"skipped for time: {', '.join(report.skipped)}")
    finite = all(r.get("finite", True) for r in report.rows if "error" not in r)
    required = [
        r
        for r in report.rows
        if r["section"] in ("synthetic", "fp16", "clip") or r["runner"] in ("erm", "mlcnc")
    ]
    failed = [r for r in required if "error" in r and r["section"] != "compile"]
    elapsed = args.budget_s - budget.left()
    print(f"\n{'ALL LOSSES FINITE' if finite else 'NON-FINITE LOSS FOUND'}; "
          f"{len(failed)} required run(s) failed; {elapsed:.0f} s")  # fmt: skip
    out = args.json or (
        Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "device": device_name, "cores": cores, "torch": torch.__version__,
            "precision": precision, "args": {k: str(v) for k, v in vars(args).items()},
            "rows": report.rows, "ratios": report.ratios(), "notes": report.notes,
            "skipped": report.skipped, "gather": report.gather, "seconds": elapsed,
        }  # fmt: skip
        out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {out}")
    return 0 if finite and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
