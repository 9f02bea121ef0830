"""Long-tail tools: class groups, statistics, and the DB subset maker (spec B7.2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlcnc.data.longtail import (
    class_groups,
    conditional_cooccurrence,
    cooccurrence_order,
    dataset_stats,
    make_longtail_subset,
    pareto_reference_counts,
)
from mlcnc.data.readers import MultiLabelSplit

VOC_REFERENCE_COUNTS = [
    800,
    529,
    359,
    248,
    175,
    125,
    91,
    67,
    50,
    38,
    29,
    23,
    18,
    14,
    11,
    9,
    7,
    6,
    5,
    4,
]


def test_class_groups_boundaries_and_thresholds():
    freq = np.array([100, 99, 20, 19, 0, 500, 1])
    groups = class_groups(freq)
    assert groups["head"].tolist() == [0, 5]
    assert groups["medium"].tolist() == [1, 2]
    assert groups["tail"].tolist() == [3, 4, 6]
    custom = class_groups(freq, head=20, tail=2)
    assert custom["head"].tolist() == [0, 1, 2, 5]
    assert custom["medium"].tolist() == [3]
    assert custom["tail"].tolist() == [4, 6]
    with pytest.raises(ValueError, match="must not exceed"):
        class_groups(freq, head=10, tail=20)


@pytest.mark.parametrize(("benchmark", "sizes"), [("voc_lt", [6, 6, 8]), ("coco_lt", [22, 33, 25])])
def test_class_groups_equal_official_split(shared_benchmarks, benchmark, sizes):
    stats = json.loads((shared_benchmarks / benchmark / "reference_stats.json").read_text())
    groups = class_groups(np.array(stats["class_freq"]))
    assert groups["head"].tolist() == sorted(stats["class_split"]["head"])
    assert groups["medium"].tolist() == sorted(stats["class_split"]["middle"])
    assert groups["tail"].tolist() == sorted(stats["class_split"]["tail"])
    assert [len(groups[g]) for g in ("head", "medium", "tail")] == sizes


def test_pareto_reference_counts_match_spec():
    assert pareto_reference_counts(20, 800, 1).tolist() == VOC_REFERENCE_COUNTS
    coco = pareto_reference_counts(80, 1200, 1)
    assert coco[0] == 1200 and coco[-1] == 6 and len(coco) == 80
    assert np.all(np.diff(coco) <= 0)
    # Against the textbook Pareto pdf b / x^(b+1) on [ppf(0), ppf(0.99)], written as a loop.
    b, num = 6.0, 20
    lo, hi = 1.0, (1 - 0.99) ** (-1 / b)
    loop = [
        int(b / (lo + k * (hi - lo) / (num - 1)) ** (b + 1) * (800 - 1) / b + 1) for k in range(num)
    ]
    assert loop == VOC_REFERENCE_COUNTS
    with pytest.raises(ValueError):
        pareto_reference_counts(5, 1, 10)


def test_cooccurrence_order_against_loop():
    rng = np.random.default_rng(3)
    labels = (rng.random((60, 6)) < [0.5, 0.1, 0.3, 0.05, 0.2, 0.0]).astype(np.uint8)
    c = labels.shape[1]
    prob = np.zeros((c, c))
    for i in range(c):
        rows = [r for r in labels if r[i]]
        for j in range(c):
            prob[i, j] = sum(r[j] for r in rows) / len(rows) if rows else 0.0
    np.testing.assert_allclose(conditional_cooccurrence(labels), prob)
    assert np.isfinite(conditional_cooccurrence(labels)).all()
    hub = prob.sum(axis=0)
    assert cooccurrence_order(labels).tolist() == sorted(range(c), key=lambda j: (-hub[j], j))


def _reference_subset(labels, max_count, min_count, seed):
    """Spec B7.2 written plainly: Python sets and loops, the same seeded Generator draws."""
    targets = pareto_reference_counts(labels.shape[1], max_count, min_count)
    rng = np.random.default_rng(seed)
    selected: set[int] = set()
    for target, c in zip(targets, cooccurrence_order(labels), strict=True):
        holders = {i for i in range(len(labels)) if labels[i, c]}
        count = len(holders & selected)
        if count < target:
            pool = np.array(sorted(holders - selected), dtype=np.int64)
            take = min(int(target) - count, len(pool))
            selected |= {int(i) for i in rng.choice(pool, size=take, replace=False)}
        elif count > target:
            pool = np.array(sorted(holders & selected), dtype=np.int64)
            selected -= {int(i) for i in rng.choice(pool, size=count - int(target), replace=False)}
    return sorted(selected)


def test_make_longtail_subset_matches_reference_and_is_deterministic():
    rng = np.random.default_rng(0)
    labels = (rng.random((3000, 20)) < np.linspace(0.35, 0.03, 20)).astype(np.uint8)
    subset = make_longtail_subset(labels, 400, 2, seed=7)
    assert subset.tolist() == _reference_subset(labels, 400, 2, seed=7)
    assert np.all(np.diff(subset) > 0)  # sorted, unique
    assert make_longtail_subset(labels, 400, 2, seed=7).tolist() == subset.tolist()
    assert make_longtail_subset(labels, 400, 2, seed=8).tolist() != subset.tolist()
    freq = labels[subset].sum(axis=0)
    assert freq.max() / max(freq.min(), 1) > 10  # long-tailed


def test_make_longtail_subset_single_label_hits_targets_exactly():
    # One label per image: no co-occurrence, so every class ends exactly at its target.
    labels = np.repeat(np.eye(20, dtype=np.uint8), 900, axis=0)
    subset = make_longtail_subset(labels, 800, 1, seed=0)
    counts = labels[subset].sum(axis=0)
    assert sorted(counts.tolist(), reverse=True) == VOC_REFERENCE_COUNTS


def test_make_longtail_subset_warns_when_a_class_is_short():
    labels = np.repeat(np.eye(3, dtype=np.uint8), [50, 5, 5], axis=0)
    with pytest.warns(UserWarning, match="too few images"):
        subset = make_longtail_subset(labels, 40, 10, seed=0)
    assert labels[subset].sum(axis=0).max() == 40


def test_dataset_stats_values():
    labels = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0]])
    split = MultiLabelSplit([f"{i}.png" for i in range(5)], labels, ["a", "b", "c", "d"], "x.csv")
    stats = dataset_stats(split, head=4, tail=2)
    assert stats["class_freq"] == [4, 2, 2, 0]
    assert stats["groups"] == {"head": ["a"], "medium": ["b", "c"], "tail": ["d"]}
    assert stats["imbalance_ratio"] == 2.0  # over classes with positives
    assert stats["empty_classes"] == ["d"]
    assert stats["label_cardinality"] == pytest.approx(8 / 5)
    assert stats["images_without_labels"] == 1 and stats["max_labels_per_image"] == 3
    assert stats["top_cooccurrences"] == [("a", "b", 2), ("a", "c", 2), ("b", "c", 1)]
    json.dumps(stats)  # plain types only
