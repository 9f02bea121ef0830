"""The neural-collapse report of a trained model on a dataset split.

Runs the model over the split (the engine's evaluation pass, keeping the per-class
projections), then writes into one folder:

- ``cosine_class_means.png``: pairwise cosines of the centred class means against the
  simplex-ETF ideal -1/(K-1) (``mlcnc.metrics.neural_collapse``);
- ``cosine_classifier.png``: the same for the columns of the classifier (MLC-NC's ETF);
- ``ap_vs_frequency.png`` and ``class_frequency.png``: per-class AP against training
  positives, and the training long tail, coloured by head / medium / tail;
- ``collapse.json`` (every number) and ``report.md`` (a short summary linking the figures).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mlcnc import metrics, plots
from mlcnc.data import MultiLabelSplit
from mlcnc.io import write_atomic, write_json

NC_KEYS = ("nc1", "nc2_equinorm", "nc2_cos_mean_dev", "nc2_cos_max_dev", "nc3")

REPORT_FILES = (
    "report.md",
    "collapse.json",
    "cosine_class_means.png",
    "cosine_classifier.png",
    "ap_vs_frequency.png",
    "class_frequency.png",
)
"""What ``collapse_report`` writes into its folder."""


def collapse_report(
    trained: Any,
    split: MultiLabelSplit,
    out_dir: str | Path,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str = "cpu",
    skip_bad_images: bool = False,
    split_label: str = "",
) -> dict[str, Any]:
    """Measure and plot ``trained`` on ``split`` into ``out_dir`` (see the module docstring);
    returns the numbers written to ``collapse.json``."""
    from mlcnc.data.longtail import class_groups
    from mlcnc.engine.evaluation import classifier_matrix

    class_names = list(trained.class_names)
    if list(split.class_names) != class_names:
        raise ValueError(
            f"{split.source}: its classes {split.class_names} differ from the model's {class_names}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = _predict_with_projections(
        trained, split, batch_size, num_workers, device, skip_bad_images
    )
    class_freq = np.asarray(trained.class_freq, dtype=np.int64)
    data_cfg = trained.config.data
    groups = class_groups(class_freq, head=data_cfg.head_threshold, tail=data_cfg.tail_threshold)

    ap = metrics.average_precision(predictions.logits, predictions.targets)
    result: dict[str, Any] = {
        "checkpoint": str(getattr(trained, "checkpoint", "")),
        "weights": "EMA" if getattr(trained, "uses_ema", False) else "regular",
        "data": split_label or split.source,
        "num_images": len(predictions.indices),
        "map": metrics.group_mean_ap(ap, groups, class_names),
        "groups": {name: [class_names[c] for c in idx] for name, idx in groups.items()},
        "per_class": _per_class_rows(ap, class_freq, predictions.targets, class_names),
        "figures": {},
    }
    figures = result["figures"]
    # A class without training positives has no place on the log axis: drawn at 1, and said.
    result["no_train_positives"] = [class_names[c] for c in np.flatnonzero(class_freq == 0)]
    figures["ap_vs_frequency"] = plots.plot_ap_vs_frequency(
        ap, np.maximum(class_freq, 1), out_dir / "ap_vs_frequency.png", class_names, groups
    ).name
    figures["class_frequency"] = plots.plot_class_frequency(
        class_freq, out_dir / "class_frequency.png", class_names, groups
    ).name

    classifier = classifier_matrix(trained.model)
    result["collapse"] = _collapse_section(predictions, classifier, class_names, out_dir, figures)
    result["classifier"] = _classifier_section(classifier, class_names, out_dir, figures)
    write_json(out_dir / "collapse.json", result)
    write_atomic(out_dir / "report.md", markdown_report(result))
    return result


def _predict_with_projections(
    trained: Any,
    split: MultiLabelSplit,
    batch_size: int,
    num_workers: int,
    device: str,
    skip_bad_images: bool,
) -> Any:
    """``trained``'s predictions on ``split``, with the per-class projections, on one device."""
    from lightning.fabric import Fabric

    from mlcnc.data import build_dataset
    from mlcnc.engine.evaluation import eval_loader, predict

    fabric = Fabric(accelerator=str(device).split(":")[0], devices=1, precision="32-true")
    trained.model.to(fabric.device)
    loader = eval_loader(
        build_dataset(split, trained.transform, skip_bad_images), batch_size, num_workers
    )
    return predict(trained.model, loader, fabric, keep_projections=True)


def _per_class_rows(
    ap: np.ndarray, class_freq: np.ndarray, targets: np.ndarray, class_names: list[str]
) -> list[dict[str, Any]]:
    """One row per class: its training and evaluated positives and its AP (%)."""
    return [
        {
            "class": class_names[c],
            "train_positives": int(class_freq[c]),
            "positives": int(targets[:, c].sum()),
            "ap": None if np.isnan(ap[c]) else float(100 * ap[c]),
        }
        for c in range(len(class_names))
    ]


def _collapse_section(
    predictions: Any,
    classifier: Any,
    class_names: list[str],
    out_dir: Path,
    figures: dict[str, str],
) -> dict[str, Any] | None:
    """NC1-NC3 of the per-class projections and their cosine figure (None without them)."""
    if predictions.projections is None:
        return None
    collapse = metrics.neural_collapse(predictions.projections, predictions.targets, classifier)
    figures["cosine_class_means"] = plots.plot_cosine_heatmap(
        collapse["cosine"],
        out_dir / "cosine_class_means.png",
        class_names,
        ideal=collapse["ideal_cosine"],
        title="Class means of the per-class projections",
    ).name
    return {
        **{k: collapse[k] for k in NC_KEYS},
        "ideal_cosine": collapse["ideal_cosine"],
        "classes_used": len(collapse["valid_classes"]),
        "excluded_classes": [class_names[c] for c in collapse["excluded_classes"]],
    }


def _classifier_section(
    classifier: Any, class_names: list[str], out_dir: Path, figures: dict[str, str]
) -> dict[str, Any] | None:
    """How far the classifier's columns are from a simplex ETF, and their cosine figure
    (None for a model without a classifier matrix)."""
    if classifier is None:
        return None
    num_classes = len(class_names)
    classifier_cosine = _cosines(classifier.numpy().T)
    ideal = -1.0 / (num_classes - 1)
    off = np.abs(classifier_cosine - ideal)[~np.eye(num_classes, dtype=bool)]
    figures["cosine_classifier"] = plots.plot_cosine_heatmap(
        classifier_cosine,
        out_dir / "cosine_classifier.png",
        class_names,
        ideal=ideal,
        title="Classifier columns",
    ).name
    return {
        "shape": list(classifier.shape),
        "cos_mean_dev": float(off.mean()),
        "cos_max_dev": float(off.max()),
        "ideal_cosine": ideal,
    }


def _cosines(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.clip(unit @ unit.T, -1.0, 1.0)


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def markdown_report(result: dict[str, Any]) -> str:
    """The short Markdown summary of a ``collapse_report`` result."""
    lines = [
        "# Neural-collapse report",
        "",
        f"- checkpoint: `{result['checkpoint']}` ({result['weights']} weights)",
        f"- data: `{result['data']}`, {result['num_images']} images",
        "",
        "## mAP (%)",
        "",
        "| " + " | ".join(result["map"]) + " |",
        "|" + "---|" * len(result["map"]),
        "| " + " | ".join(_number(v, 2) for v in result["map"].values()) + " |",
        "",
        "## Collapse of the per-class projections",
        "",
    ]
    collapse = result["collapse"]
    if collapse is None:
        lines.append("The model gives no per-class projections (only MLC-NC does): no NC numbers.")
    else:
        lines += [
            "0 means fully collapsed for every number (see `mlcnc.metrics.neural_collapse`).",
            "",
            "| diagnostic | value | meaning |",
            "|---|---|---|",
            f"| NC1 | {_number(collapse['nc1'])} | within-class variability, Tr(Sw Sb^+)/K |",
            f"| NC2 equinorm | {_number(collapse['nc2_equinorm'])} | std/mean of centred class-mean norms |",
            f"| NC2 cosine, mean dev | {_number(collapse['nc2_cos_mean_dev'])} | mean abs(cos - ({_number(collapse['ideal_cosine'], 3)})) over class pairs |",
            f"| NC2 cosine, max dev | {_number(collapse['nc2_cos_max_dev'])} | worst class pair |",
            f"| NC3 | {_number(collapse['nc3'])} | mean 1 - cos(class mean, classifier column) |",
            "",
            f"{collapse['classes_used']} classes with at least 2 positives take part.",
        ]
        if collapse["excluded_classes"]:
            lines.append(
                f"Left out (fewer than 2 positives): {', '.join(collapse['excluded_classes'])}."
            )
    classifier = result["classifier"]
    if classifier is not None:
        lines += [
            "",
            "## Classifier",
            "",
            f"Columns of the {classifier['shape'][0]} x {classifier['shape'][1]} classifier: "
            f"mean abs deviation of pairwise cosines from {_number(classifier['ideal_cosine'], 3)} "
            f"is {_number(classifier['cos_mean_dev'])} (max {_number(classifier['cos_max_dev'])}); "
            "0 for a simplex ETF.",
        ]
    if result["no_train_positives"]:
        lines += [
            "",
            "Classes without training positives (drawn at 1 on the frequency axis): "
            + ", ".join(result["no_train_positives"]),
        ]
    lines += ["", "## Figures", ""]
    titles = {
        "cosine_class_means": "Pairwise cosines of class means",
        "cosine_classifier": "Pairwise cosines of classifier columns",
        "ap_vs_frequency": "Per-class AP against training frequency",
        "class_frequency": "Training positives per class",
    }
    for key, name in result["figures"].items():
        lines += [f"### {titles.get(key, key)}", "", f"![{titles.get(key, key)}]({name})", ""]
    return "\n".join(lines)
