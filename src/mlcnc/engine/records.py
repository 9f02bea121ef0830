"""What a run reports: the result a finished run returns (``TrainResult``, with its test mAP
table) and the line printed after each epoch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcnc.engine import selection as sel
from mlcnc.engine.evaluation import format_map_table
from mlcnc.engine.run_folder import GROUPS
from mlcnc.engine.traps import ema_note, partial_eval_note
from mlcnc.metrics import scores_note


@dataclass
class TrainResult:
    """What a finished run gives back (on every rank; only rank 0 wrote the files).

    last:  metrics of the last epoch (flat dict as in metrics.jsonl).
    best:  the record of the best epoch on val (None without a val split).
    best_on_test: the best epoch by test mAP (regular model) -- optimistic, chosen on test.
    selection: the selected model (checkpoint, variant, epoch, metric; see
           ``mlcnc.engine.selection``), as in RUN/selection.json.
    """

    run_dir: Path
    last: dict[str, Any]
    best: dict[str, Any] | None = None
    best_on_test: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    global_rank: int = 0
    selection: dict[str, Any] | None = None
    ema_decay: float = 0.0  # with ema_warmup: the EMA's note in the selection line
    ema_warmup: bool = False
    limit_eval_batches: int | None = None  # the table is marked PARTIAL
    eval_scores: str = "logits"  # what AP ranked (train.eval_scores): the table says

    def table(self) -> str:
        """Total / Head / Medium / Tail test mAP: last epoch (regular and EMA); the epoch
        best on val; the best epoch on test, labelled optimistic (rows repeating the last
        epoch become a note); the selected model's row is marked and a last line names it."""
        rows, notes = [], []
        epoch = self.last.get("epoch")
        variants = (("test", "regular"), ("test_ema", "EMA"))
        for key, label in variants:
            if f"{key}/map_total" in self.last:
                rows.append((f"last epoch {epoch}, {label}", map_groups(self.last, key)))
        if self.best is not None and self.best.get("epoch") == epoch:
            notes.append(f"best on val ({self.best.get('select_metric', 'val')}): the last epoch")
        elif self.best is not None:
            for key, label in variants:
                if f"{key}/map_total" in self.best:
                    rows.append(
                        (
                            f"best on val (epoch {self.best['epoch']}), {label}",
                            map_groups(self.best, key),
                        )
                    )
        if self.best_on_test is not None and self.best_on_test.get("epoch") == epoch:
            notes.append("best epoch on test: the last epoch")
        elif self.best_on_test is not None:
            rows.append(
                (
                    f"best epoch ON TEST ({self.best_on_test['epoch']}), regular [optimistic]",
                    map_groups(self.best_on_test, "test"),
                )
            )
        chosen = self.selection
        if chosen is not None:
            label = "EMA" if chosen["variant"] == "ema" else "regular"
            epoch_of = {"val": (self.best or {}).get("epoch"), "last": epoch}[chosen["rule"]]
            prefix = "last epoch" if epoch_of == epoch else "best on val"
            rows = [
                (f"{name} [selected]", values)
                if name.startswith(prefix) and name.endswith(f", {label}")
                else (name, values)
                for name, values in rows
            ]
            notes.append(
                f"selected model: {chosen['checkpoint']}, {sel.WEIGHTS[chosen['variant']]} "
                f"({sel.describe(chosen)}); evaluate / predict / export / inspect of the run "
                "folder use it"
            )
            if chosen["variant"] == "ema":
                steps = next(
                    (r.get("step") for r in self.history if r.get("epoch") == chosen["epoch"]),
                    self.last.get("step"),
                )
                note = ema_note(steps, self.ema_decay, self.ema_warmup)
                if note is not None:
                    notes.append(f"{note}; --no-ema loads the regular weights")
        title = "Test mAP (%)"
        partial = partial_eval_note(self.limit_eval_batches)
        if partial is not None:
            title += f", {partial}"
        title += f"; {scores_note(self.eval_scores)}"
        return "\n".join([format_map_table(rows, title=title), *notes])


def map_groups(record: dict[str, Any], key: str) -> dict[str, float]:
    """Total / head / medium / tail mAP of ``key`` (e.g. ``test_ema``) in a record."""
    return {g: as_float(record.get(f"{key}/map_{g}")) for g in GROUPS}


def as_float(value: Any) -> float:
    """A record's value as a float (None, a metric not available, is NaN)."""
    return float("nan") if value is None else float(value)


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The line printed after each epoch: loss, val / test mAP (EMA), speed."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record.get('loss/total', math.nan):.4f}"]
    for key, label in (("val/map_total", "val mAP"), ("test/map_total", "test mAP")):
        if key in record:
            ema_key = key.replace("/", "_ema/")
            ema = f" (EMA {as_float(record[ema_key]):.2f})" if ema_key in record else ""
            parts.append(f"{label} {as_float(record[key]):.2f}{ema}")
    parts.append(f"{record['img_per_s']:.1f} img/s")
    return "  ".join(parts)
