"""gpu_check's report: the rows of every section, notes and skips, the ratios (against
``plain`` of the same variant, MLC-NC / ERM) and the closing table."""

from __future__ import annotations

import math
from typing import Any


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
