"""Training and evaluation speed: the mlcnc engine against a plain PyTorch loop (a script, not a test).

For every method (default ``erm`` and ``mlcnc``) and every (threads, workers) pair, one run of
``mlcnc.engine.train(cfg)`` with ``cfg = load_config('synthetic', overrides)`` and one run of a
plain loop written below, on the same data, transform, sampler, model
(``mlcnc.methods.build_method``), criterion, batch, workers, threads and optimizer
(``mlcnc.engine.optim.build_optimizer``). The plain loop has no Fabric, no EMA, no schedule,
no per-step finiteness check, no logging: what a user would write by hand.

What is timed, and why it is comparable: both run ``--epochs`` epochs of ``--steps`` steps
and only the LAST epoch is timed (the first ones warm up allocators and kernels). The engine's
``metrics.jsonl`` gives that epoch's ``epoch_seconds``, which runs from the creation of the
loader iterator (worker start-up included) to the last optimizer step; the plain loop is timed
over exactly the same span. The plain loop also records its steady rate (first
``--skip-steps`` steps of the timed epoch left out), which shows what start-up costs.

Evaluation: the engine's ``eval_seconds`` (regular and EMA models, on val and test, metrics
included) against a plain ``torch.inference_mode`` loop (batch ``--plain-eval-batch``, one
model) over the same images; both as img/s (forward passes per second) and as wall time.

Runs alternate (engine first on even repeats, plain first on odd ones) and the median of
``--repeats`` is reported with its spread (min-max), because the machine may be shared.

    python benchmarks/bench_train.py --threads 2 --workers 2 --image-size 128 --repeats 3
    python benchmarks/bench_train.py --methods mlcnc --threads 1,2 --workers 0,2 \
        --image-size 112 --steps 40 --epochs 1 --engine-only --no-eval     # the threads rule
    python benchmarks/bench_train.py --data /tmp/jpegs   # the CSV dataset bench_data.py writes
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from mlcnc.config import Config, load_config
from mlcnc.data import build_dataset, build_sampler, build_splits
from mlcnc.data.transforms import build_transforms
from mlcnc.engine import train
from mlcnc.engine.optim import build_optimizer
from mlcnc.methods import build_method

TARGET_ENGINE_VS_PLAIN = 0.95  # ERM engine / plain loop
TARGET_MLCNC_VS_ERM = 0.90  # MLC-NC / ERM (engine)


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default="erm,mlcnc", help="comma-separated method names")
    parser.add_argument("--threads", type=int_list, default=[2], help="e.g. 1,2 (a grid)")
    parser.add_argument("--workers", type=int_list, default=[2], help="e.g. 0,2 (a grid)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="the last one is timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-steps", type=int, default=3, help="left out of the steady rate")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--pretrained", default="true", help="true, false or a weights file")
    parser.add_argument(
        "--mlcnc-warmup",
        type=int,
        default=0,
        help="MLC-NC warm-up epochs (0: every loss term from the first step, the full cost)",
    )
    parser.add_argument(
        "--data",
        default="synthetic",
        help="'synthetic' (the embedded benchmark) or a folder with train.csv/val.csv/test.csv",
    )
    parser.add_argument("--engine-only", action="store_true", help="no plain loop")
    parser.add_argument("--no-eval", action="store_true", help="do not time evaluation")
    parser.add_argument(
        "--eval-batches", type=int, default=6, help="engine eval batches per split (0 = all)"
    )
    parser.add_argument("--eval-batch", type=int, default=64, help="engine eval batch size")
    parser.add_argument("--plain-eval-batch", type=int, default=256)
    parser.add_argument("--override", action="append", default=[], help="extra key=value")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------
# the two runners


def engine_config(args: argparse.Namespace, method: str, threads: int, workers: int, out: Path):
    """The engine's config for one run (the synthetic config plus overrides)."""
    overrides = [
        f"method.name={method}",
        f"method.backbone={args.backbone}",
        f"method.pretrained={args.pretrained}",
        f"data.image_size={args.image_size}",
        f"data.num_workers={workers}",
        f"data.epoch_length={args.steps * args.batch}",
        f"optim.batch_size={args.batch}",
        f"optim.epochs={args.epochs}",
        f"train.num_threads={threads}",
        f"train.eval_every={args.epochs + 1}",  # only the last epoch is evaluated
        f"train.eval_batch_size={args.eval_batch}",
        f"train.limit_eval_batches={args.eval_batches or 'null'}",
        f"train.output={out}",
        "train.progress=false",
        "train.plots=false",
        "train.accelerator=cpu",
    ]
    if method.startswith("mlcnc") and method != "mlcnc_no_fla":
        overrides.append(f"method.loss.warmup_epochs={args.mlcnc_warmup}")
    if args.data != "synthetic":
        folder = Path(args.data)
        overrides += [
            "data.name=csv",
            f"data.train_csv={folder / 'train.csv'}",
            f"data.val_csv={folder / 'val.csv'}" if (folder / "val.csv").is_file() else "",
            f"data.test_csv={folder / 'test.csv'}",
        ]
    overrides += args.override
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file's MLC-NC options left out for ERM
        return load_config("synthetic", [o for o in overrides if o])


def run_engine(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """One ``mlcnc.engine.train`` run; the figures of its last (timed) epoch."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(cfg, config_name="bench")
    record = result.history[-1]
    images = args.steps * args.batch
    out = {
        "seconds": record["epoch_seconds"],
        "img_per_s": images / record["epoch_seconds"],
        "engine_img_per_s": record["img_per_s"],
        "wall_s": time.perf_counter() - started,
    }
    if "eval_seconds" in record and not args.no_eval:
        out["eval_seconds"] = record["eval_seconds"]
    return out


def eval_subsets(cfg: Config, args: argparse.Namespace, splits: dict) -> dict[str, list[int]]:
    """The images of each split that the engine's limited evaluation sees (its first ones)."""
    subsets = {}
    for name in ("val", "test"):
        if name in splits:
            n = len(splits[name])
            if args.eval_batches:
                n = min(n, args.eval_batches * args.eval_batch)
            subsets[name] = list(range(n))
    return subsets


def run_plain(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    """The plain loop: loader -> model -> criterion -> backward -> Adam. Same pieces as the
    engine, nothing else; timed over the same span as the engine's ``epoch_seconds``."""
    torch.set_num_threads(cfg.train.num_threads)
    torch.manual_seed(cfg.train.seed)
    splits = build_splits(cfg.data)
    train_split = splits["train"]
    class_freq = train_split.labels.sum(axis=0).astype(np.int64)
    method = build_method(
        cfg.method, len(train_split.class_names), class_freq, num_samples=len(train_split)
    )
    model, criterion = method.model, method.criterion
    dataset = build_dataset(
        train_split, build_transforms(cfg.method.recipe, cfg.data.image_size, train=True)
    )
    sampler = build_sampler(method.sampler, train_split.labels, cfg.data, seed=cfg.train.seed)
    loader = DataLoader(
        dataset, batch_size=cfg.optim.batch_size, sampler=sampler, num_workers=cfg.data.num_workers
    )
    optimizer = build_optimizer(model, cfg.optim)
    model.train()
    criterion.train()
    seconds, step_ends = float("nan"), []
    for epoch in range(cfg.optim.epochs):
        sampler.set_epoch(epoch)
        criterion.set_epoch(epoch)
        started = time.perf_counter()
        step_ends = []
        for step, (images, targets, _) in enumerate(loader):
            if step >= args.steps:
                break
            loss = criterion(model(images), targets)["total"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step_ends.append(time.perf_counter())
        seconds = time.perf_counter() - started
        criterion.end_epoch(None)
    skip = min(args.skip_steps, len(step_ends) - 2)
    steady = (len(step_ends) - 1 - skip) * args.batch / (step_ends[-1] - step_ends[skip])
    out: dict[str, Any] = {
        "seconds": seconds,
        "img_per_s": len(step_ends) * args.batch / seconds,
        "steady_img_per_s": steady,
        "first_batch_s": step_ends[0] - started,
    }
    out["ema_ms_per_step"] = ema_update_ms(model)
    if not args.no_eval:
        out.update(plain_eval(cfg, args, splits, model))
    return out


def ema_update_ms(model: torch.nn.Module, calls: int = 10) -> float:
    """Cost of one ``ModelEmaV3.update`` (what the engine adds every step), in ms."""
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=0.9997)
    ema.update(model, step=1)
    started = time.perf_counter()
    for step in range(calls):
        ema.update(model, step=step + 2)
    return 1000 * (time.perf_counter() - started) / calls


def plain_eval(
    cfg: Config, args: argparse.Namespace, splits: dict, model: torch.nn.Module
) -> dict[str, Any]:
    """One inference pass (one model) over the images the engine evaluates."""
    transform = build_transforms(cfg.method.recipe, cfg.data.image_size, train=False)
    model.eval()
    images, started = 0, time.perf_counter()
    with torch.inference_mode():
        for name, indices in eval_subsets(cfg, args, splits).items():
            dataset = Subset(build_dataset(splits[name], transform), indices)
            loader = DataLoader(
                dataset, batch_size=args.plain_eval_batch, num_workers=cfg.data.num_workers
            )
            for batch, _, _ in loader:
                torch.sigmoid(model(batch).logits)
                images += batch.shape[0]
    seconds = time.perf_counter() - started
    model.train()
    return {"eval_seconds": seconds, "eval_images": images, "eval_img_per_s": images / seconds}


# --------------------------------------------------------------------------------------
# the grid, the summary


def environment() -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "machine": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": cores,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:7.1f} ({min(values):.1f}-{max(values):.1f})"


def median_of(results: list[dict], key: str, **match: Any) -> float:
    values = [r[key] for r in results if key in r and all(r[k] == v for k, v in match.items())]
    return statistics.median(values) if values else float("nan")


def summarise(results: list[dict], args: argparse.Namespace, methods: list[str]) -> dict[str, Any]:
    lines, ratios = [], {}
    header = (
        f"{'threads':>7} {'workers':>7} {'method':<8} {'runner':<6} {'img/s median (min-max)':>24}"
    )
    lines += [header, "-" * len(header)]
    combos = list(itertools.product(args.threads, args.workers))
    runners = ["engine"] + ([] if args.engine_only else ["plain"])
    for threads, workers in combos:
        for method in methods:
            for runner in runners:
                values = [
                    r["img_per_s"]
                    for r in results
                    if (r["threads"], r["workers"], r["method"], r["runner"])
                    == (threads, workers, method, runner)
                ]
                lines.append(
                    f"{threads:>7} {workers:>7} {method:<8} {runner:<6} {spread(values):>24}"
                )
    lines.append("")
    for threads, workers in combos:
        key = f"t{threads}_w{workers}"
        m = {"threads": threads, "workers": workers}
        if not args.engine_only:
            for method in methods:
                e = median_of(results, "img_per_s", method=method, runner="engine", **m)
                p = median_of(results, "img_per_s", method=method, runner="plain", **m)
                ratios[f"{key}/{method}/engine_vs_plain"] = e / p
                target = f" (target >= {TARGET_ENGINE_VS_PLAIN})" if method == "erm" else ""
                lines.append(
                    f"threads {threads} workers {workers}: {method} engine / plain = "
                    f"{e / p:.3f}{target}"
                )
                steady = median_of(results, "steady_img_per_s", method=method, **m)
                ema = median_of(results, "ema_ms_per_step", method=method, **m)
                lines.append(
                    f"    plain steady rate (first {args.skip_steps} steps left out) "
                    f"{steady:.1f} img/s; EMA update {ema:.1f} ms/step "
                    f"({100 * ema / 1000 * p / args.batch:.1f}% of a plain step)"
                )
        if "erm" in methods:
            for other in [x for x in methods if x != "erm"]:
                for runner in runners:
                    o = median_of(results, "img_per_s", method=other, runner=runner, **m)
                    e = median_of(results, "img_per_s", method="erm", runner=runner, **m)
                    ratios[f"{key}/{other}_vs_erm/{runner}"] = o / e
                    target = f" (target >= {TARGET_MLCNC_VS_ERM})" if other == "mlcnc" else ""
                    lines.append(
                        f"threads {threads} workers {workers}: {other} / erm ({runner}) = "
                        f"{o / e:.3f}{target}"
                    )
        if not args.no_eval:
            for method in methods:
                ee = [
                    r
                    for r in results
                    if r["runner"] == "engine"
                    and r["method"] == method
                    and r["threads"] == threads
                    and r["workers"] == workers
                    and "eval_seconds" in r
                ]
                pe = [
                    r
                    for r in results
                    if r["runner"] == "plain"
                    and r["method"] == method
                    and r["threads"] == threads
                    and r["workers"] == workers
                    and "eval_seconds" in r
                ]
                if not ee or not pe:
                    continue
                one_pass = statistics.median(r["eval_images"] for r in pe)
                engine_s = statistics.median(r["eval_seconds"] for r in ee)
                plain_s = statistics.median(r["eval_seconds"] for r in pe)
                # The engine runs every image through the regular and the EMA model.
                engine_rate = 2 * one_pass / engine_s
                plain_rate = one_pass / plain_s
                ratios[f"{key}/{method}/eval_wall_engine_vs_plain"] = engine_s / plain_s
                ratios[f"{key}/{method}/eval_rate_engine_vs_plain"] = engine_rate / plain_rate
                lines.append(
                    f"threads {threads} workers {workers}: {method} evaluation of "
                    f"{int(one_pass)} images: engine {engine_s:.1f} s (2 models, "
                    f"{engine_rate:.1f} img/s), plain {plain_s:.1f} s (1 model, "
                    f"{plain_rate:.1f} img/s): wall x{engine_s / plain_s:.2f}, "
                    f"per image {engine_rate / plain_rate:.2f}x the plain rate"
                )
    return {"table": "\n".join(lines), "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    env = environment()
    print(
        f"{env['machine']}: {env['cores']} cores, load {env['load_average']}, torch {env['torch']}\n"
        f"{args.backbone} {args.image_size} px, batch {args.batch}, {args.epochs} epochs of "
        f"{args.steps} steps (last timed), repeats {args.repeats}, data {args.data}"
    )
    if args.data == "synthetic":
        from mlcnc.data.synthetic import ensure_synthetic_benchmark

        ensure_synthetic_benchmark()
    results: list[dict[str, Any]] = []
    runners = ["engine"] + ([] if args.engine_only else ["plain"])
    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmp:
        for repeat in range(args.repeats):
            order = runners if repeat % 2 == 0 else runners[::-1]
            combos = list(itertools.product(args.threads, args.workers))
            if repeat % 2:
                combos = combos[::-1]
            for (threads, workers), method in itertools.product(combos, methods):
                for runner in order:
                    out = Path(tmp) / f"{method}-t{threads}-w{workers}-r{repeat}-{runner}"
                    cfg = engine_config(args, method, threads, workers, out)
                    figures = run_engine(cfg, args) if runner == "engine" else run_plain(cfg, args)
                    row = {
                        "repeat": repeat,
                        "runner": runner,
                        "method": method,
                        "threads": threads,
                        "workers": workers,
                        "load_average": os.getloadavg()[0],
                        **figures,
                    }
                    results.append(row)
                    evaluated = (
                        f", eval {row['eval_seconds']:.1f} s" if "eval_seconds" in row else ""
                    )
                    print(
                        f"repeat {repeat} {runner:<6} {method:<8} threads {threads} workers "
                        f"{workers}: {row['img_per_s']:.1f} img/s{evaluated} "
                        f"(load {row['load_average']:.2f})",
                        flush=True,
                    )
    summary = summarise(results, args, methods)
    print("\n" + summary["table"])
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"environment": env, "args": vars(args) | {"json": str(args.json)}}
        payload |= {"results": results, "ratios": summary["ratios"]}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
