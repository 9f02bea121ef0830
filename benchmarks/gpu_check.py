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

Modules: this one (options, budget, sections, main); ``gpu_check_train.py`` (variants, the
timed training run); ``gpu_check_report.py`` (rows, ratios, table); ``gpu_check_clip.py``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gpu_check_report import Report
from gpu_check_train import (  # noqa: F401  (gpu_check_clip reads these from here)
    BASELINE,
    CHANNELS_LAST,
    CL_FUSED,
    CL_FUSED_COMPILE,
    CL_FUSED_NO_SYNC,
    NO_CUDNN_BENCH,
    LoaderSource,
    Variant,
    _autocast,
    _sync,
    build,
    long_tail,
    synthetic_source,
    train_run,
)

HERE = Path(__file__).resolve().parent
SECTIONS = ("synthetic", "fp16", "data", "decode", "gather", "clip", "compile")

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
# one run in a subprocess


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
