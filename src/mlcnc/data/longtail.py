"""Long-tail tools: class groups, dataset statistics and the Distribution-Balanced subset maker (spec B7.2) that draws a long-tailed subset of any
multi-label dataset.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from mlcnc.data.cooccurrence import cooccurrence_counts
from mlcnc.data.readers import MultiLabelSplit
from mlcnc.groups import CLASS_GROUPS as GROUP_NAMES


def class_groups(class_freq: np.ndarray, head: int = 100, tail: int = 20) -> dict[str, np.ndarray]:
    """Class indices by training count n_c: head n_c >= head, tail n_c < tail, medium between.

    The benchmark thresholds (100, 20) reproduce the official VOC-LT (6/6/8) and COCO-LT
    (22/33/25) splits.
    """
    freq = np.asarray(class_freq)
    if freq.ndim != 1:
        raise ValueError(f"class_freq must be (C,), got shape {freq.shape}")
    if tail > head:
        raise ValueError(f"tail threshold ({tail}) must not exceed head threshold ({head})")
    return {
        "head": np.flatnonzero(freq >= head),
        "medium": np.flatnonzero((freq >= tail) & (freq < head)),
        "tail": np.flatnonzero(freq < tail),
    }


def conditional_cooccurrence(labels: np.ndarray) -> np.ndarray:
    """(C, C) float: row i is P(j | i), the mean label vector of the images holding class i
    (a row of zeros for a class without positives)."""
    counts = cooccurrence_counts(labels, include_diagonal=True).astype(np.float64)
    freq = np.diag(counts).copy()
    return np.divide(counts, freq[:, None], out=np.zeros_like(counts), where=freq[:, None] > 0)


def dataset_stats(
    split: MultiLabelSplit, head: int = 100, tail: int = 20, top_pairs: int = 10
) -> dict[str, Any]:
    """Plain-type summary of a split: per-class counts, groups, imbalance ratio, label
    cardinality and the most frequent class pairs.

    imbalance_ratio: max n_c / min n_c over classes with at least one positive
    (classes without positives are listed in ``empty_classes`` instead of giving inf).
    """
    freq = split.class_freq
    groups = class_groups(freq, head, tail)
    names = split.class_names
    per_image = split.labels.sum(axis=1, dtype=np.int64)
    counts = cooccurrence_counts(split.labels, include_diagonal=True)
    i, j = np.triu_indices(len(names), k=1)
    pair_counts = counts[i, j]
    top = np.argsort(-pair_counts, kind="stable")[:top_pairs]
    present = freq[freq > 0]
    return {
        "source": split.source,
        "num_images": len(split),
        "num_classes": len(names),
        "class_names": list(names),
        "class_freq": freq.tolist(),
        "groups": {g: [names[c] for c in groups[g]] for g in GROUP_NAMES},
        "group_sizes": {g: len(groups[g]) for g in GROUP_NAMES},
        "thresholds": {"head": head, "tail": tail},
        "imbalance_ratio": float(present.max() / present.min()) if len(present) else None,
        "empty_classes": [names[c] for c in np.flatnonzero(freq == 0)],
        "label_cardinality": float(per_image.mean()),
        "images_without_labels": int((per_image == 0).sum()),
        "max_labels_per_image": int(per_image.max()),
        "top_cooccurrences": [
            (names[i[k]], names[j[k]], int(pair_counts[k])) for k in top if pair_counts[k] > 0
        ],
    }


# -------------------------------------------------------------- DB subset maker


def pareto_reference_counts(
    num_classes: int, max_count: int, min_count: int, shape: float = 6.0
) -> np.ndarray:
    """(C,) int64 target counts: a Pareto(shape) pdf at C evenly spaced points between its
    0 and 0.99 quantiles, scaled to [min_count, max_count] and truncated (DB's procedure)."""
    if num_classes < 1 or max_count < min_count or min_count < 0:
        raise ValueError(
            f"need num_classes >= 1 and 0 <= min_count <= max_count, got {num_classes}, "
            f"{min_count}, {max_count}"
        )
    if not (math.isfinite(shape) and shape > 0):
        raise ValueError(
            f"the Pareto shape (--pareto-shape) must be a finite number > 0, got {shape} "
            "(default 6)"
        )
    # Pareto with scale 1: pdf(x) = b / x^(b+1) for x >= 1; ppf(q) = (1 - q)^(-1/b).
    x = np.linspace(1.0, 0.01 ** (-1.0 / shape), num_classes)
    pdf = shape / x ** (shape + 1)
    return (pdf * (max_count - min_count) / shape + min_count).astype(np.int64)


def cooccurrence_order(labels: np.ndarray) -> np.ndarray:
    """Classes by descending column sum of P(j | i): co-occurrence hubs first (stable)."""
    hub_score = conditional_cooccurrence(labels).sum(axis=0)
    return np.argsort(-hub_score, kind="stable")


def make_longtail_subset(
    labels: np.ndarray,
    max_count: int,
    min_count: int,
    pareto_shape: float = 6.0,
    seed: int = 0,
) -> np.ndarray:
    """Sorted row indices of a long-tailed subset of ``labels`` (N, C) (spec B7.2).

    The i-th class in co-occurrence order gets the i-th Pareto reference count as target.
    Walking the classes in that order, each class's count in the current selection (which
    includes images added earlier for other classes) is brought to its target: random
    unselected images holding the class are added, or random selected ones removed. Later
    steps change earlier classes' counts, as in DB. Candidates are sorted before sampling
    with a seeded numpy Generator, so the result depends only on (labels, arguments).
    A class with too few images gets all of them, with a warning naming it.
    """
    positives = np.asarray(labels) > 0
    if positives.ndim != 2 or positives.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty (N, C) matrix, got shape {positives.shape}")
    num_classes = positives.shape[1]
    targets = pareto_reference_counts(num_classes, max_count, min_count, pareto_shape)
    rng = np.random.default_rng(seed)
    selected = np.zeros(len(positives), dtype=bool)
    short = []
    for target, c in zip(targets, cooccurrence_order(positives), strict=True):  # C steps
        has_class = positives[:, c]
        count = int((selected & has_class).sum())
        if count < target:
            candidates = np.flatnonzero(has_class & ~selected)  # sorted
            take = min(int(target) - count, len(candidates))
            if take < target - count:
                short.append((int(c), int(target), count + take))
            selected[rng.choice(candidates, size=take, replace=False)] = True
        elif count > target:
            candidates = np.flatnonzero(has_class & selected)
            selected[rng.choice(candidates, size=count - int(target), replace=False)] = False
    if short:
        warnings.warn(
            "make_longtail_subset: too few images for "
            + ", ".join(f"class {c} (target {t}, got {g})" for c, t, g in short),
            stacklevel=2,
        )
    return np.flatnonzero(selected)
