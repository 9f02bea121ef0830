"""Label co-occurrence statistics of a training split (ML-GCN's graph, MFM's prior).

Both are computed from the (N, C) multi-hot training labels only, never from test labels.
"""

from __future__ import annotations

import numpy as np


def cooccurrence_counts(labels: np.ndarray, include_diagonal: bool = False) -> np.ndarray:
    """M_ij = number of training images positive for both class i and class j, (C, C).

    ``include_diagonal=False`` (the default) sets M_ii = 0: the pair counts of distinct
    classes, the form of the co-occurrence files shipped with MFM's code (the MLC-NC
    repository's ``src_files/loss_functions/voc_co_occurrence.npy`` has a zero diagonal) and
    of ML-GCN's ``adj`` counts; with True, M_ii = n_i (the class counts). int64.
    """
    y = np.asarray(labels)
    if y.ndim != 2:
        raise ValueError(f"labels must be (N, C), got shape {y.shape}")
    y = (y > 0).astype(np.int64)
    counts = y.T @ y
    if not include_diagonal:
        np.fill_diagonal(counts, 0)
    return counts


def conditional_probabilities(labels: np.ndarray) -> np.ndarray:
    """P_ij = M_ij / n_i for i != j, the estimate of P(j | i); P_ii = 0. (C, C) float64.

    ML-GCN's correlation before binarising (``ML-GCN: util.py``, ``gen_A``: ``adj / nums``,
    whose shipped ``adj`` counts have a zero diagonal). A class without a positive image
    has a zero row.
    """
    y = (np.asarray(labels) > 0).astype(np.float64)
    if y.ndim != 2:
        raise ValueError(f"labels must be (N, C), got shape {y.shape}")
    class_counts = y.sum(axis=0)
    pairs = cooccurrence_counts(y).astype(np.float64)
    prob = np.zeros_like(pairs)
    present = class_counts > 0
    prob[present] = pairs[present] / class_counts[present, None]
    return prob
