"""The benchmark's results: one run's record, the rows (mean and sample std over seeds) and
the tables written from them (Markdown, CSV and a grouped bar chart), with the machine
they ran on. ``mlcnc.benchmark`` runs the benchmark and calls these."""

from __future__ import annotations

import csv
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlcnc.groups import MAP_GROUPS as GROUPS
from mlcnc.io import open_atomic, write_atomic
from mlcnc.metrics import SCORES


def display(name: str) -> str:
    """The method's name in tables."""
    from mlcnc.methods import display_name

    return display_name(name)


@dataclass
class RunResult:
    """One finished (method, seed) run: last-epoch test mAP (%) by group for each model."""

    method: str
    seed: int
    run_dir: Path
    epoch: int
    map: dict[str, dict[str, float]]  # model ("regular", "ema") -> group -> mAP %
    seconds: float | None = None  # wall-clock training time
    scores: str = "logits"  # what AP ranked (train.eval_scores)


@dataclass
class MethodRow:
    """A table row: mean and sample std (ddof 1) over the seeds; with a single seed the
    std is NaN (undefined: the table shows the one value, n=1, and no error bar)."""

    method: str
    seeds: list[int]
    mean: dict[str, float]
    std: dict[str, float]
    scores: str = "logits"  # what AP ranked (train.eval_scores)


def aggregate(
    runs: Sequence[RunResult], methods: Sequence[str], model: str = "regular"
) -> list[MethodRow]:
    """One row per method (in ``methods`` order) with runs: mean and std over seeds."""
    rows = []
    for method in methods:
        mine = sorted((r for r in runs if r.method == method), key=lambda r: r.seed)
        if not mine:
            continue
        missing = [r.seed for r in mine if model not in r.map]
        if missing:
            raise ValueError(
                f"method {method!r}: seeds {missing} have no {model} model metrics "
                "(the EMA is off in their config?)"
            )
        values = np.array([[r.map[model][g] for g in GROUPS] for r in mine], dtype=np.float64)
        mean = values.mean(axis=0)
        std = values.std(axis=0, ddof=1) if len(mine) > 1 else np.full(len(GROUPS), np.nan)
        rows.append(
            MethodRow(
                method,
                [r.seed for r in mine],
                dict(zip(GROUPS, mean.tolist(), strict=True)),
                dict(zip(GROUPS, std.tolist(), strict=True)),
                mine[0].scores,  # one config per method, so one kind of score
            )
        )
    return rows


def _cell(mean: float, std: float, seeds: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.2f}" if seeds == 1 else f"{mean:.2f} ± {std:.2f}"


def spread_words(seeds: Sequence[int]) -> str:
    """``mean ± sample std over seeds 0, 1, 2`` or, for one seed, ``one seed (0), n=1: a
    single value, no spread``."""
    if len(seeds) == 1:
        return f"one seed ({seeds[0]}), n=1: a single value, no spread"
    return (
        f"mean ± sample std over seeds {', '.join(map(str, seeds))} (a row with one seed: "
        "its single value, n=1)"
    )


def table_caption(model: str, seeds: Sequence[int]) -> str:
    which = "regular model" if model == "regular" else "EMA model"
    return (
        f"Test mAP (%) at the last epoch, {which}, {spread_words(seeds)}; no epoch or "
        "hyper-parameter was selected on test. n/a: the split has no class in that group."
    )


def markdown_table(rows: Sequence[MethodRow], caption: str) -> str:
    lines = [
        caption,
        "",
        "| Method | Total | Head | Medium | Tail | Seeds |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [_cell(row.mean[g], row.std[g], len(row.seeds)) for g in GROUPS]
        seeds = ",".join(map(str, row.seeds))
        lines.append(f"| {display(row.method)} | {' | '.join(cells)} | {seeds} |")
    return "\n".join([*lines, "", scores_line(rows)]) + "\n"


def scores_line(rows: Sequence[MethodRow]) -> str:
    """Which scores AP ranked (``train.eval_scores``): one line, naming the methods of
    each kind when they differ."""
    kinds = sorted({row.scores for row in rows}) or ["logits"]
    if len(kinds) == 1:
        return f"Scores: {SCORES[kinds[0]]}, every method."
    parts = [
        f"{SCORES[k]} for {', '.join(display(r.method) for r in rows if r.scores == k)}"
        for k in kinds
    ]
    return "Scores: " + "; ".join(parts) + "."


def write_csv(rows: Sequence[MethodRow], path: Path) -> Path:
    with open_atomic(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["method", "name", "seeds"]
            + [f"{g}_{s}" for g in GROUPS for s in ("mean", "std")]
            + ["scores"]
        )
        for row in rows:
            writer.writerow(
                [
                    row.method,
                    display(row.method),
                    " ".join(map(str, row.seeds)),
                ]
                + [
                    "" if math.isnan(v) else f"{v:.4f}"  # no std of one seed
                    for g in GROUPS
                    for v in (row.mean[g], row.std[g])
                ]
                + [row.scores]
            )
    return path


def write_tables(
    rows: Sequence[MethodRow],
    output: Path,
    model: str,
    seeds: Sequence[int],
    footer: str = "",
    plot: bool = True,
) -> dict[str, Path]:
    """results.md, results.csv and (``plot``) results.png in ``output``."""
    files = {"markdown": output / "results.md", "csv": output / "results.csv"}
    write_atomic(files["markdown"], markdown_table(rows, table_caption(model, seeds)) + footer)
    write_csv(rows, files["csv"])
    if plot and rows:
        from mlcnc.plots import plot_benchmark

        names = [display(r.method) for r in rows]
        files["plot"] = plot_benchmark(
            {n: r.mean for n, r in zip(names, rows, strict=True)},
            output / "results.png",
            stds={n: r.std for n, r in zip(names, rows, strict=True)},  # NaN: no bar
            title=f"Last-epoch test mAP (%), {model} model, "
            + ("n=1 (one seed)" if len(seeds) == 1 else "mean ± std over seeds"),
        )
    return files


def environment_note(command: str | None) -> str:
    """Where and how the table was made: the command, the hardware and the versions."""
    import torch

    gpus = ""
    if torch.cuda.is_available():
        gpus = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, "
    lines = ["", f"Machine: {gpus}{os.cpu_count()} CPU cores ({platform.machine()}); "
             f"Python {platform.python_version()}, torch {torch.__version__}."]  # fmt: skip
    if command:
        lines.insert(1, f"Command: `{command}`")
    return "\n".join(lines) + "\n"
