"""GPU smoke and speed check: a few hundred training steps of MLC-NC (ResNet-50, 224 px, AMP)
and of a linear-head BCE model (``erm``) on random pixels, through the engine's own pieces
(ModelWithLoss, Adam + OneCycle, EMA, Fabric precision).

Prints images/s (training steps only, after warm-up; data loading excluded: the pixels are
made on the GPU), peak GPU memory, and whether every loss stayed finite; exits 1 if not.
Without CUDA it says so and exits 0. Deterministic: seeded weights, pixels and labels.
No downloads (``pretrained=False``).

    python benchmarks/gpu_check.py [--steps 300] [--batch-size 64] [--precision auto]
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of MLC-NC")
    parser.add_argument("--baseline-steps", type=int, default=150, help="steps of the BCE model")
    parser.add_argument("--warmup-steps", type=int, default=20, help="untimed first steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=80, help="80 = COCO-LT")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--precision", default="auto", help="auto, bf16-mixed, 16-mixed, 32-true")
    parser.add_argument("--device", default="cuda", help="cuda (cpu only to test the script)")
    return parser.parse_args()


def run_method(name: str, args: argparse.Namespace, steps: int, precision: str) -> dict:
    """Train ``steps`` steps of method ``name``; returns img/s, peak memory, loss history."""
    from lightning.fabric import Fabric

    from mlcnc.config import OptimConfig
    from mlcnc.engine.loop import ModelWithLoss
    from mlcnc.engine.optim import build_optimizer, build_scheduler
    from mlcnc.methods import METHODS, MethodConfig, build_method

    fabric = Fabric(accelerator=args.device, devices=1, precision=precision)
    torch.manual_seed(0)
    generator = np.random.default_rng(0)
    num_classes = args.num_classes
    # A long-tailed label distribution, as COCO-LT's: per-class positive rates 0.3 ... 0.003.
    rates = 0.3 * np.geomspace(1.0, 0.01, num_classes)
    class_freq = np.maximum((rates * 1909).astype(np.int64), 1)
    if name not in METHODS:
        raise SystemExit(f"method {name!r} is not registered; have: {', '.join(METHODS.names())}")
    method = build_method(
        MethodConfig(name=name, backbone=args.backbone, pretrained=False),
        num_classes,
        class_freq,
    )
    criterion = method.criterion
    epoch_steps = max(steps // 3, 1)  # three short "epochs": warm-up, then all terms
    if hasattr(criterion, "warmup_epochs"):
        criterion.warmup_epochs = 1
    optim_cfg = OptimConfig(epochs=3)
    optimizer = build_optimizer(method.model, optim_cfg)
    scheduler = build_scheduler(optimizer, optim_cfg, epoch_steps)
    model, optimizer_f = fabric.setup(ModelWithLoss(method.model, criterion), optimizer)
    criterion.to(fabric.device)
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(method.model, decay=0.9997)

    images = torch.randn(
        4, args.batch_size, 3, args.image_size, args.image_size, device=fabric.device
    )
    targets = torch.from_numpy(
        (generator.random((4, args.batch_size, num_classes)) < rates).astype(np.float32)
    ).to(fabric.device)
    if fabric.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    totals, terms_at_epoch_end = [], []
    timed_images, started = 0, None
    model.train()
    criterion.train()
    step = 0
    for epoch in range(3):
        criterion.set_epoch(epoch)
        for _ in range(epoch_steps):
            if step == args.warmup_steps:
                if fabric.device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
            losses = model(images[step % 4], targets[step % 4])
            optimizer_f.zero_grad(set_to_none=True)
            fabric.backward(losses["total"])
            optimizer_f.step()
            scheduler.step()
            step += 1
            ema.update(method.model, step=step)
            totals.append(losses["total"].detach())
            if started is not None:
                timed_images += args.batch_size
        criterion.end_epoch(None)
        terms_at_epoch_end.append({k: v.item() for k, v in losses.items()})
    if fabric.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started if started is not None else float("nan")
    history = torch.stack(totals).float().cpu()
    return {
        "method": name,
        "steps": step,
        "img_per_s": timed_images / seconds if seconds > 0 else float("nan"),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30
        if fabric.device.type == "cuda"
        else float("nan"),
        "finite": bool(torch.isfinite(history).all()),
        "first_loss": float(history[0]),
        "last_loss": float(history[-1]),
        "terms": terms_at_epoch_end,
        "precision": precision,
    }


def main() -> int:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("SKIP: no CUDA device found; gpu_check needs a CUDA GPU (nothing was run).")
        return 0
    precision = args.precision
    if precision == "auto":
        cuda = args.device == "cuda"
        precision = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(
        f"{args.backbone}, {args.image_size} px, batch {args.batch_size}, "
        f"{args.num_classes} classes, random pixels, precision {precision}"
    )
    results = [run_method("mlcnc", args, args.steps, precision)]
    results.append(run_method("erm", args, args.baseline_steps, precision))
    if args.device == "cuda" and precision == "bf16-mixed":
        # The fp16 + GradScaler path (GPUs without bf16) must stay finite too.
        results.append(run_method("mlcnc", args, max(args.steps // 5, 30), "16-mixed"))
    ok = True
    print(f"\n{'method':<8} {'precision':<11} {'steps':>5} {'img/s':>8} {'peak GiB':>9} finite")
    for r in results:
        print(
            f"{r['method']:<8} {r['precision']:<11} {r['steps']:>5} {r['img_per_s']:>8.1f} "
            f"{r['peak_gib']:>9.2f} {r['finite']}"
        )
        ok &= r["finite"] and math.isfinite(r["last_loss"])
    print()
    for r in results:
        print(
            f"{r['method']} ({r['precision']}) loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}"
        )
        for epoch, terms in enumerate(r["terms"]):
            print(f"  after part {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in terms.items()))
    print("\nALL LOSSES FINITE" if ok else "\nNON-FINITE LOSS FOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
