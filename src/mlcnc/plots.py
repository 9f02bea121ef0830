"""Figures a researcher looks at after a run: each function writes one PNG and returns its path.

Functions take plain arrays and dicts (never engine objects) and draw with matplotlib's
object API on the Agg canvas (no pyplot state, safe in worker processes and without a
display). Bad input (mismatched lengths, unknown groups) raises ValueError naming the series.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

GROUP_COLORS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#2ca02c", "total": "#333333"}
OTHER_COLOR = "#7f7f7f"
NC_LABELS = {
    "nc1": "NC1  Tr(Sw Sb+)/C",
    "nc2_equinorm": "NC2  equinorm (std/mean)",
    "nc2_cos_mean_dev": "NC2  mean |cos + 1/(C-1)|",
    "nc2_cos_max_dev": "NC2  max |cos + 1/(C-1)|",
    "nc3": "NC3  mean (1 - cos(mean, classifier))",
}


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG; {path} does not end in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    from mlcnc.io import write_atomic  # an interrupt leaves the old image, never half

    write_atomic(path, writer=lambda f: figure.savefig(f, dpi=110, format="png"))
    return path


def _series(values: Any, name: str, length: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if length is not None and array.shape[0] != length:
        raise ValueError(f"{name} has {array.shape[0]} values, expected {length}")
    return array


def _x_axis(x: Sequence[float] | None, length: int) -> np.ndarray:
    """The given x values (checked against the series length) or 0..length-1."""
    if x is None:
        return np.arange(length, dtype=np.float64)
    return _series(x, "x", length)


def _group_of_classes(num_classes: int, groups: Mapping[str, Any] | None) -> list[str]:
    """The group name of every class ('' where no group holds it); errors on bad indices."""
    membership = [""] * num_classes
    for name, indices in (groups or {}).items():
        for index in np.asarray(indices, dtype=np.int64).reshape(-1):
            if not 0 <= index < num_classes:
                raise ValueError(
                    f"group {name!r} holds class index {index} outside 0..{num_classes - 1}"
                )
            membership[index] = name
    return membership


def _check_names(class_names: Sequence[str] | None, num_classes: int) -> None:
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")


def plot_loss_terms(
    terms: Mapping[str, Sequence[float]],
    path: str | Path,
    x: Sequence[float] | None = None,
    x_label: str = "step",
    title: str = "Loss terms",
    warmup_end: float | None = None,
) -> Path:
    """Every loss term (``{"total": [...], "fla": [...], ...}``) against steps or epochs, on a
    log scale (0 left out; symmetric log when a term is negative); ``warmup_end`` (an x value) is
    marked with a vertical line; the legend stands outside the data."""
    if not terms:
        raise ValueError("no loss terms to plot")
    length = len(next(iter(terms.values())))
    series_by_term = {
        name: _series(values, f"loss term {name!r}", length) for name, values in terms.items()
    }
    x_values = _x_axis(x, length)
    figure = _new_figure(7, 4)
    axes = figure.subplots()
    for name, series in series_by_term.items():
        axes.plot(x_values, series, label=name, linewidth=1.8 if name == "total" else 1.2)
    finite = np.concatenate([s[np.isfinite(s)] for s in series_by_term.values()])
    if finite.size and (finite < 0).any():
        axes.set_yscale("symlog")
    else:  # a term at 0 is one not computed yet (MLC-NC's warm-up): left out, not drawn at 0
        axes.set_yscale("log", nonpositive="mask")
    if warmup_end is not None:
        axes.axvline(warmup_end, color="0.4", linestyle=":", label="loss warm-up ends")
    axes.set_xlabel(x_label)
    axes.set_ylabel("loss (log scale)")
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    figure.legend(loc="outside right upper")
    return _save(figure, path)


def plot_map_by_group(
    epochs: Sequence[float],
    regular: Mapping[str, Sequence[float]],
    path: str | Path,
    ema: Mapping[str, Sequence[float]] | None = None,
    title: str = "mAP by class group",
    selection: tuple[str, Sequence[float]] | None = None,
) -> Path:
    """mAP (%) per group over epochs: solid lines for the regular model, dashed for its EMA;
    ``selection`` (name, values per epoch, NaN where not evaluated): the val metric that
    selects the model, in black; the legend stands outside the data."""
    epochs_array = _series(epochs, "epochs")
    figure = _new_figure(7, 4)
    axes = figure.subplots()
    for label, history, style in (("", regular, "-"), (" (EMA)", ema or {}, "--")):
        for group, values in history.items():
            series = _series(values, f"mAP of {group!r}{label}", epochs_array.shape[0])
            color = GROUP_COLORS.get(group, OTHER_COLOR)
            axes.plot(epochs_array, series, style, color=color, marker=".", label=group + label)
    if selection is not None:
        name, values = selection
        series = _series(values, f"selection metric {name!r}", epochs_array.shape[0])
        axes.plot(epochs_array, series, ":", color="black", marker="s", label=f"{name} (selects)")
    axes.set_xlabel("epoch")
    axes.set_ylabel("mAP (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.legend(loc="outside right upper", fontsize="small")
    return _save(figure, path)


def plot_ap_vs_frequency(
    ap: Sequence[float],
    class_freq: Sequence[float],
    path: str | Path,
    class_names: Sequence[str] | None = None,
    groups: Mapping[str, Any] | None = None,
    title: str = "Per-class AP against training frequency",
) -> Path:
    """Per-class AP against the number of training positives (log x), coloured by group.

    ``ap`` as fractions (what ``metrics.average_precision`` returns) or in %; drawn in %.
    """
    ap_values = _series(ap, "ap")
    num_classes = ap_values.shape[0]
    freq = _series(class_freq, "class_freq", num_classes)
    if (freq <= 0).any():
        zero = np.flatnonzero(freq <= 0).tolist()
        raise ValueError(f"classes {zero} have no training positive: no place on a log axis")
    _check_names(class_names, num_classes)
    membership = _group_of_classes(num_classes, groups)
    scale = 100.0 if np.nanmax(ap_values, initial=0.0) <= 1.0 else 1.0
    figure = _new_figure(8, 5)
    axes = figure.subplots()
    for group in dict.fromkeys(membership):
        selected = [c for c in range(num_classes) if membership[c] == group]
        axes.scatter(
            freq[selected],
            scale * ap_values[selected],
            color=GROUP_COLORS.get(group, OTHER_COLOR),
            label=group or "other",
            s=28,
        )
    if class_names is not None:
        for c in range(num_classes):
            if np.isfinite(ap_values[c]):
                axes.annotate(
                    class_names[c],
                    (freq[c], scale * ap_values[c]),
                    fontsize=6,
                    xytext=(3, 2),
                    textcoords="offset points",
                )
    axes.set_xscale("log")
    axes.set_xlabel("training positives (log scale)")
    axes.set_ylabel("AP (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    return _save(figure, path)


def plot_neural_collapse(
    epochs: Sequence[float],
    history: Mapping[str, Sequence[float | None]],
    path: str | Path,
    title: str = "Neural-collapse diagnostics",
) -> Path:
    """One panel per diagnostic (``nc1``, ``nc2_equinorm``, ...) over epochs; NC1 on a log axis."""
    epochs_array = _series(epochs, "epochs")
    if not history:
        raise ValueError("no neural-collapse diagnostics to plot")
    figure = _new_figure(3.2 * len(history), 3.2)
    axes_row = np.atleast_1d(figure.subplots(1, len(history)))
    for axes, (name, values) in zip(axes_row, history.items(), strict=True):
        cleaned = [np.nan if v is None else v for v in values]
        series = _series(cleaned, f"diagnostic {name!r}", epochs_array.shape[0])
        axes.plot(epochs_array, series, marker=".")
        if name == "nc1" and np.nanmin(series, initial=np.inf) > 0:
            axes.set_yscale("log")
        axes.set_title(NC_LABELS.get(name, name), fontsize="small")
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    return _save(figure, path)


def plot_cosine_heatmap(
    cosine: Any,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    ideal: float | None = None,
    title: str = "Pairwise cosines of class means",
) -> Path:
    """A (C, C) cosine matrix beside its deviation from the simplex-ETF ideal -1/(C-1).

    ``ideal`` defaults to -1/(C-1) over the classes with finite entries; NaN rows (classes
    left out) are drawn blank. The title gives the mean and max |deviation| off the diagonal.
    """
    matrix = np.asarray(cosine, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"cosine must be a square (C, C) matrix; got shape {matrix.shape}")
    num_classes = matrix.shape[0]
    _check_names(class_names, num_classes)
    valid = np.isfinite(np.diag(matrix))
    if ideal is None:
        ideal = -1.0 / max(int(valid.sum()) - 1, 1)
    deviation = matrix - ideal
    np.fill_diagonal(deviation, np.nan)
    off = np.abs(deviation[np.isfinite(deviation)])
    summary = f"mean |dev| {off.mean():.3f}, max {off.max():.3f}" if off.size else "no pairs"
    figure = _new_figure(11, 5)
    left, right = figure.subplots(1, 2)
    image = left.imshow(matrix, cmap="coolwarm", vmin=-1, vmax=1)
    figure.colorbar(image, ax=left, shrink=0.8)
    left.set_title("cosine")
    limit = max(float(np.nanmax(np.abs(deviation), initial=0.0)), 1e-6)
    image = right.imshow(deviation, cmap="PuOr", vmin=-limit, vmax=limit)
    figure.colorbar(image, ax=right, shrink=0.8)
    right.set_title(f"cosine - ideal ({ideal:.3f})")
    for axes in (left, right):
        if class_names is not None and num_classes <= 40:
            axes.set_xticks(range(num_classes), class_names, rotation=90, fontsize=6)
            axes.set_yticks(range(num_classes), class_names, fontsize=6)
    figure.suptitle(f"{title}: {summary}")
    return _save(figure, path)


def plot_class_frequency(
    class_freq: Sequence[float],
    path: str | Path,
    class_names: Sequence[str] | None = None,
    groups: Mapping[str, Any] | None = None,
    title: str = "Training positives per class",
) -> Path:
    """Bars of training positives per class, sorted from most to least frequent, coloured by group."""
    freq = _series(class_freq, "class_freq")
    num_classes = freq.shape[0]
    _check_names(class_names, num_classes)
    membership = _group_of_classes(num_classes, groups)
    order = np.argsort(-freq, kind="stable")
    figure = _new_figure(max(6.0, 0.18 * num_classes + 2), 4)
    axes = figure.subplots()
    colors = [GROUP_COLORS.get(membership[c], OTHER_COLOR) for c in order]
    axes.bar(np.arange(num_classes), freq[order], color=colors)
    labels = [class_names[c] for c in order] if class_names else [str(c) for c in order]
    axes.set_xticks(np.arange(num_classes), labels, rotation=90, fontsize=6)
    if freq.min() > 0 and freq.max() / freq.min() > 50:
        axes.set_yscale("log")
    handles = [
        Patch(color=GROUP_COLORS.get(group, OTHER_COLOR), label=group or "other")
        for group in dict.fromkeys(membership[c] for c in order)
    ]
    axes.set_ylabel("positives")
    axes.set_title(title)
    axes.legend(handles=handles)
    return _save(figure, path)


def plot_benchmark(
    means: Mapping[str, Mapping[str, float]],
    path: str | Path,
    stds: Mapping[str, Mapping[str, float]] | None = None,
    title: str = "mAP (%) by method and class group",
) -> Path:
    """Grouped bars of a benchmark table: ``means[method][group]``, error bars ``stds[method][group]``."""
    if not means:
        raise ValueError("no methods to plot")
    methods = list(means)
    groups = list(means[methods[0]])
    for method in methods:
        if list(means[method]) != groups:
            raise ValueError(
                f"method {method!r} has groups {list(means[method])}, expected {groups}"
            )
        if stds is not None and set(stds.get(method, {})) != set(groups):
            raise ValueError(f"stds of method {method!r} must give groups {groups}")
    figure = _new_figure(min(16.0, max(6.0, 0.3 * len(methods) * len(groups) + 2)), 4.5)
    axes = figure.subplots()
    width = 0.8 / len(groups)
    positions = np.arange(len(methods), dtype=np.float64)
    for g, group in enumerate(groups):
        heights = [float(means[m][group]) for m in methods]
        errors = [float(stds[m][group]) for m in methods] if stds is not None else None
        axes.bar(
            positions + (g - (len(groups) - 1) / 2) * width,
            heights,
            width,
            yerr=errors,
            capsize=3,
            color=GROUP_COLORS.get(group),
            label=group,
        )
    axes.set_xticks(positions, methods, rotation=30, ha="right")
    axes.set_ylabel("mAP (%)")
    axes.set_title(title)
    axes.grid(alpha=0.3, axis="y")
    axes.legend()
    return _save(figure, path)
