"""The run folder: resolved config, per-epoch metrics (JSON lines + CSV), TensorBoard, plots.

Layout::

    RUN/config.yaml            the resolved config (every key)
    RUN/metrics.jsonl          one JSON object per epoch
    RUN/metrics.csv            the same, one row per epoch (columns = union of keys)
    RUN/per_class.csv          per-class AP / training frequency / group at the last epoch
    RUN/tensorboard/           TensorBoard event files
    RUN/checkpoints/           last.ckpt, best.ckpt (best on val, when there is a val split)
    RUN/plots/                 loss terms, mAP by group, AP vs frequency, NC diagnostics

Only rank 0 writes.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mlcnc.engine.checkpoint import CHECKPOINT_DIR
from mlcnc.groups import MAP_GROUPS as GROUPS

NC_KEYS = ("nc1", "nc2_equinorm", "nc2_cos_mean_dev", "nc3")


def default_run_dir(config_name: str, root: str | Path = "runs") -> Path:
    """runs/<config name>-<UTC timestamp>."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{Path(config_name).stem}-{stamp}"


class RunFolder:
    """Writes a run's files; every method is a no-op unless ``enabled`` (rank 0)."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.checkpoints = self.path / CHECKPOINT_DIR
        self.records: list[dict[str, Any]] = []
        self._tensorboard = None
        if enabled:
            self.checkpoints.mkdir(parents=True, exist_ok=True)

    # -- metrics -------------------------------------------------------------------------

    def load_records(self) -> None:
        """Re-read metrics.jsonl (on resume), so the CSV and plots cover the whole run."""
        path = self.path / "metrics.jsonl"
        if self.enabled and path.is_file():
            with open(path) as f:
                self.records = [json.loads(line) for line in f if line.strip()]

    def truncate_records(self, last_epoch: int) -> None:
        """Keep records up to ``last_epoch`` (those after a resumed checkpoint are redone)."""
        self.records = [r for r in self.records if r.get("epoch", 0) <= last_epoch]
        self._write_records()

    def log_epoch(self, record: Mapping[str, Any], step: int) -> None:
        """Append one epoch's scalars to metrics.jsonl / metrics.csv / TensorBoard."""
        if not self.enabled:
            return
        record = {k: _jsonable(v) for k, v in record.items()}
        self.records.append(record)
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        self._write_csv()
        self.log_scalars({k: v for k, v in record.items() if k != "epoch"}, step)

    def log_scalars(self, scalars: Mapping[str, Any], step: int) -> None:
        """TensorBoard scalars (numbers only)."""
        if not self.enabled:
            return
        numbers = {
            k: float(v)
            for k, v in scalars.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        }
        if numbers:
            self.tensorboard.log_metrics(numbers, step=step)

    @property
    def tensorboard(self) -> Any:
        if self._tensorboard is None:
            from lightning.fabric.loggers import TensorBoardLogger

            self._tensorboard = TensorBoardLogger(
                root_dir=self.path, name="tensorboard", version=""
            )
        return self._tensorboard

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.finalize("success")

    def _write_records(self) -> None:
        if not self.enabled:
            return
        with open(self.path / "metrics.jsonl", "w") as f:
            for record in self.records:
                f.write(json.dumps(record) + "\n")
        self._write_csv()

    def _write_csv(self) -> None:
        columns: dict[str, None] = {}
        for record in self.records:
            columns.update(dict.fromkeys(record))
        with open(self.path / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(self.records)

    def write_per_class(
        self,
        class_names: Sequence[str],
        class_freq: Sequence[int],
        groups: Mapping[str, np.ndarray],
        columns: Mapping[str, np.ndarray],
    ) -> None:
        """per_class.csv: class, training positives, group, then one column per AP series (%)."""
        if not self.enabled:
            return
        group_of = {int(c): name for name, indices in groups.items() for c in indices}
        with open(self.path / "per_class.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class", "train_positives", "group", *columns])
            for c, name in enumerate(class_names):
                values = [f"{100 * float(v[c]):.4f}" for v in columns.values()]
                writer.writerow([name, int(class_freq[c]), group_of.get(c, ""), *values])

    # -- plots ---------------------------------------------------------------------------

    def write_plots(
        self,
        class_names: Sequence[str],
        class_freq: Sequence[int],
        groups: Mapping[str, np.ndarray],
        last_ap: np.ndarray | None,
        split: str = "test",
    ) -> list[Path]:
        """The four figures from the records; a figure that cannot be drawn is skipped with
        a warning (a plot must never fail a finished run)."""
        if not self.enabled or not self.records:
            return []
        from mlcnc import plots

        folder = self.path / "plots"
        folder.mkdir(exist_ok=True)
        written = []
        epochs = [r["epoch"] for r in self.records]

        def series(key: str, records: list[dict[str, Any]]) -> list[float]:
            return [_float(r.get(key)) for r in records]

        def attempt(name: str, draw: Any) -> None:
            try:
                written.append(draw())
            except Exception as error:  # a figure is a convenience: warn, never fail the run
                warnings.warn(f"plot {name} skipped: {error}", RuntimeWarning, stacklevel=2)

        terms = sorted({k for r in self.records for k in r if k.startswith("loss/")})
        if terms:
            attempt(
                "loss terms",
                lambda: plots.plot_loss_terms(
                    {t.removeprefix("loss/"): series(t, self.records) for t in terms},
                    folder / "loss_terms.png",
                    x=epochs,
                    x_label="epoch",
                ),
            )
        evaluated = [r for r in self.records if f"{split}/map_total" in r]
        if evaluated:
            eval_epochs = [r["epoch"] for r in evaluated]
            regular = {g: series(f"{split}/map_{g}", evaluated) for g in GROUPS}
            ema = None
            if f"{split}_ema/map_total" in evaluated[-1]:
                ema = {g: series(f"{split}_ema/map_{g}", evaluated) for g in GROUPS}
            attempt(
                "mAP by group",
                lambda: plots.plot_map_by_group(
                    eval_epochs,
                    regular,
                    folder / "map_by_group.png",
                    ema=ema,
                    title=f"mAP by class group ({split})",
                ),
            )
            nc = {
                k: series(f"{split}/{k}", evaluated)
                for k in NC_KEYS
                if f"{split}/{k}" in evaluated[-1]
            }
            if nc:
                attempt(
                    "neural collapse",
                    lambda: plots.plot_neural_collapse(
                        eval_epochs, nc, folder / "neural_collapse.png"
                    ),
                )
        if last_ap is not None:
            attempt(
                "AP vs frequency",
                lambda: plots.plot_ap_vs_frequency(
                    last_ap,
                    np.maximum(np.asarray(class_freq), 1),
                    folder / "ap_vs_frequency.png",
                    class_names=list(class_names),
                    groups=groups,
                    title=f"Per-class AP ({split}, last epoch) against training frequency",
                ),
            )
        return written


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; None marks "not available"
    return value
