"""gpu_check's ``clip`` section: the vision-language methods on CLIP ViT-B/16.

open_clip ``ViT-B-16-quickgelu`` with random weights (speed does not depend on them;
nothing is downloaded), 224 px, the run's precision (bf16 autocast on a GPU with bf16):

``clip_linear``  the linear head (``erm``) on the same tower's pooled image embedding
                 (``open_clip:ViT-B-16-quickgelu:pooled``), whole tower trained: the
                 reference the others are compared with (``vs_linear``);
``lmclip``       LM-CLIP (whole CLIP trained; by design its text tower encodes the label
                 prompts and each image's caption at every training step);
``mlcnc_clip``   MLC-NC on CLIP (variant C: dense joint-space tokens, CLIP-text ETF
                 queries stored as buffers; the text tower is not kept).
Training img/s and peak GPU memory (``gpu_check.train_run``, the engine's step), then
inference img/s of each (``infer`` rows: eval mode, inference mode, autocast), counting
text-tower passes: ``text_calls`` is the number of ``encode_text`` calls during the timed
steps (LM-CLIP training: 2 per step; LM-CLIP inference and MLC-NC: 0, which the section
checks; MLC-NC's model has no text tower at all).
``--dry-run`` uses ``open_clip:mlcnc-tiny-vit`` (32 px, embedding width 16).
"""

from __future__ import annotations

import argparse
import copy
import gc
import time
from typing import Any

import torch

RUNNERS = {"clip_linear": "erm", "lmclip": "lmclip", "mlcnc_clip": "mlcnc_clip_c"}
"""gpu_check runner name -> mlcnc method."""
CONFIG, TINY = "ViT-B-16-quickgelu", "mlcnc-tiny-vit"
COST_S = 20.0
"""Rough wall time of one ViT-B/16 run on an H200 (build + warm-up + timed steps)."""
CHECK: Any = None
"""The gpu_check module that runs this section (``section_clip`` sets it)."""
LAST_CALLS: list[TextCalls] = []
"""The text-tower counter of the model ``build_clip`` built last."""


def clip_args(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` for the CLIP runs: the tower, its input size (224 px; 32 for the tiny one)."""
    out = copy.copy(args)
    out.clip_config = TINY if args.dry_run else CONFIG
    out.image_size = 32 if args.dry_run else 224
    return out


class TextCalls:
    """Counts ``encode_text`` calls of a model's CLIP (None: the model has no text tower)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.count: int | None = None
        clip = getattr(model, "clip", None)
        if clip is not None and hasattr(clip, "encode_text"):
            self.count, encode = 0, clip.encode_text

            def counted(*a: Any, **k: Any) -> Any:
                self.count += 1
                return encode(*a, **k)

            clip.encode_text = counted


def build_clip(runner: str, args: argparse.Namespace) -> Any:
    """The method of ``runner`` on the CLIP tower, seeded, random weights."""
    from mlcnc.methods import MethodConfig, build_method

    torch.manual_seed(0)
    name = RUNNERS[runner]
    backbone = f"open_clip:{args.clip_config}" + (":pooled" if name == "erm" else "")
    width = 16 if args.dry_run else 512  # MLC-NC variant C: embed_dim = CLIP's d
    options = {"embed_dim": width, "num_heads": 2 if args.dry_run else 8} if "mlcnc" in name else {}
    cfg = MethodConfig(name=name, backbone=backbone, pretrained=False, model=options)
    names = [f"class {i}" for i in range(args.num_classes)]
    method = build_method(
        cfg, args.num_classes, CHECK.long_tail(args.num_classes)[1], class_names=names
    )
    LAST_CALLS[:] = [TextCalls(method.model)]
    return method


def infer_run(runner: str, args: argparse.Namespace, precision: str) -> dict[str, Any]:
    """Inference img/s of ``runner`` (eval mode, inference mode, autocast) and the text
    tower's calls during the timed steps (after one warm-up step)."""
    device = torch.device(args.device)
    gc.collect()
    model = build_clip(runner, args).model.to(device).eval()
    calls = LAST_CALLS[0]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    images, _ = CHECK.synthetic_source(args, device)
    with torch.inference_mode(), CHECK._autocast(device, precision):
        for step in range(args.warmup_steps + args.steps):
            if step == args.warmup_steps:
                CHECK._sync(device)
                before, started = calls.count, time.perf_counter()
            model(images[step % len(images)])
        CHECK._sync(device)
    seconds = time.perf_counter() - started
    text_calls = None if calls.count is None else calls.count - before
    return {
        "runner": runner,
        "variant": "infer",
        "precision": precision,
        "steps": args.steps,
        "img_per_s": args.steps * args.batch_size / seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else float("nan"),
        "text_calls": text_calls,
        "text_tower": "absent" if text_calls is None else "kept",
    }


def clip_steps(args: argparse.Namespace) -> int:
    """The training steps of one ``train_run`` (warm-up and timed)."""
    return args.warmup_steps + args.steps


def text_calls_words(row: dict[str, Any]) -> str:
    """How often the text tower ran in a row's run, in words."""
    if row["variant"] == "infer":
        calls = row.get("text_calls")
        return "no text tower" if calls is None else f"{calls} in the timed steps"
    per_step = row.get("text_calls_per_step")
    return "no text tower" if per_step is None else f"{per_step:.1f} per training step"


def section_clip(args, precision, budget, report, check: Any) -> None:
    """Training and inference runs of every runner (see the module docstring); ``check``:
    the gpu_check module (its training step, report and helpers)."""
    global CHECK
    CHECK = gpu_check = check
    clip = clip_args(args)
    for runner in RUNNERS:
        if not budget.fits(COST_S):
            report.skip(f"clip {runner}")
            continue
        row = gpu_check.guarded(
            gpu_check.train_run, runner, gpu_check.BASELINE, clip, precision, build_fn=build_clip
        )
        count = LAST_CALLS[0].count if LAST_CALLS and "error" not in row else None
        row["text_calls_per_step"] = None if count is None else count / clip_steps(clip)
        report.add("clip", row)
        if budget.fits(COST_S / 2):
            report.add("clip", gpu_check.guarded(infer_run, runner, clip, precision))
    linear = report.find("clip", "clip_linear", "baseline")
    for row in report.rows:
        if row["section"] == "clip" and "error" not in row and row["runner"] != "clip_linear":
            base = report.find("clip", "clip_linear", row["variant"]) or linear
            if base and "error" not in base:
                row["vs_linear"] = row["img_per_s"] / base["img_per_s"]
                row["memory_vs_linear"] = row["peak_gib"] / base["peak_gib"]
        if row["section"] == "clip" and row.get("variant") == "infer" and row.get("text_calls"):
            row["error"] = f"the text tower ran {row['text_calls']} times during inference"
    for row in report.rows:
        if row["section"] == "clip" and "vs_linear" in row:
            report.note(
                f"clip: {row['runner']} {row['variant']}: x{row['vs_linear']:.3f} the linear "
                f"head's img/s, x{row['memory_vs_linear']:.2f} its peak memory; text-tower "
                f"calls: {text_calls_words(row)}"
            )
