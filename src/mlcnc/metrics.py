"""Evaluation metrics for long-tailed multi-label classification, and neural-collapse diagnostics.

Shapes: N images, C classes, P per-class projection width, D feature width.
Every function accepts numpy arrays or torch tensors and computes in float64 numpy, so the
numbers do not depend on the device or precision the scores were produced with.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlcnc.groups import CLASS_GROUPS, MAP_GROUPS

GROUP_NAMES = CLASS_GROUPS  # (kept as an alias)

SPLIT_METRICS: tuple[str, ...] = (*(f"map_{g}" for g in MAP_GROUPS), "CF1", "OF1")
"""The metrics each evaluated split and model writes, as ``<split>[_ema]/<metric>``."""


def selection_metrics(ema: bool = True) -> list[str]:
    """The metric names a run can select its best checkpoint on (val, regular and EMA)."""
    variants = ("val", "val_ema") if ema else ("val",)
    return [f"{variant}/{metric}" for variant in variants for metric in SPLIT_METRICS]


SCORES = {
    "logits": "logits (mlcnc)",
    "softmax": "softmax over classes (LMPT/LM-CLIP protocol)",
}
"""What AP ranks (``train.eval_scores``, ``mlcnc evaluate --scores``) -> its words in tables."""


def scores_note(scores: str) -> str:
    """``scores: <what AP ranked>``, the words tables and results carry."""
    return f"scores: {SCORES[scores]}"


def softmax_refusal(setting: str, source: Any, class_names: list[str]) -> str:
    """The line refusing softmax scores over fewer than 2 classes (``setting``: the key or
    option that asked for them)."""
    return (
        f"{setting}: {source} has {len(class_names)} class ({', '.join(class_names)}); a "
        "softmax over one class is 1 for every image, so every AP would be the share of "
        "positives whatever the model: softmax scores need at least 2 classes; use logits"
    )


def ranking_scores(logits: Any, scores: str = "logits") -> np.ndarray:
    """The (N, C) scores AP ranks: the logits, or (``softmax``) a float64 softmax over the
    C classes of each image, as LMPT's and LM-CLIP's evaluation code rank. A per-image
    softmax changes each class's order across images, so the two give different AP."""
    if scores not in SCORES:
        raise ValueError(
            f"bad value {scores!r} for the scores AP ranks; allowed: {', '.join(SCORES)}"
        )
    logits = _to_numpy(logits)
    if scores == "logits":
        return logits
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _to_numpy(array: Any) -> np.ndarray:
    """A float64 numpy copy of a numpy array, torch tensor or nested sequence."""
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch here
        array = array.detach().cpu().double().numpy()
    return np.asarray(array, dtype=np.float64)


def _check_scores_targets(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate (N, C) scores and binary (N, C) targets; errors name the offending classes."""
    scores = _to_numpy(scores)
    targets = _to_numpy(targets)
    if scores.ndim != 2 or targets.ndim != 2:
        raise ValueError(
            f"scores and targets must be (N, C); got shapes {scores.shape} and {targets.shape}"
        )
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} differ in shape")
    if scores.shape[0] == 0:
        raise ValueError("scores and targets hold no images (N = 0)")
    bad_scores = np.flatnonzero(~np.isfinite(scores).all(axis=0))
    if bad_scores.size:
        raise ValueError(f"scores of classes {bad_scores.tolist()} contain NaN or infinity")
    bad_targets = np.flatnonzero(((targets != 0) & (targets != 1)).any(axis=0))
    if bad_targets.size:
        raise ValueError(
            f"targets must be 0 or 1; classes {bad_targets.tolist()} hold other values"
        )
    return scores, targets


def _class_label(index: int, class_names: Sequence[str] | None) -> str:
    return f"{index} ({class_names[index]})" if class_names is not None else str(index)


def average_precision(scores: Any, targets: Any) -> np.ndarray:
    """Non-interpolated average precision per class, (N, C) -> (C,); NaN for a class without positives.

    The definition is scikit-learn's ``average_precision_score``: AP = sum_k (R_k - R_{k-1}) P_k
    over the distinct score thresholds, so tied scores form one threshold (unlike the
    ASL / MLC-NC code, which breaks ties by sort order). Vectorised over classes: each
    positive contributes the precision at the end of its tie group, divided by the number of
    positives.
    """
    scores, targets = _check_scores_targets(scores, targets)
    num_images = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    sorted_targets = np.take_along_axis(targets, order, axis=0)
    true_positives = np.cumsum(sorted_targets, axis=0)
    ranks = np.arange(1, num_images + 1, dtype=np.float64)[:, None]
    # A row ends a tie group where the next score differs (or at the last row).
    ends_group = np.ones_like(sorted_scores, dtype=bool)
    ends_group[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    row = np.broadcast_to(np.arange(num_images)[:, None], scores.shape)
    end_marker = np.where(ends_group, row, num_images)
    group_end = np.minimum.accumulate(end_marker[::-1], axis=0)[::-1]
    precision_at_end = np.take_along_axis(true_positives / ranks, group_end, axis=0)
    num_positives = targets.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (sorted_targets * precision_at_end).sum(axis=0) / num_positives
    ap[num_positives == 0] = np.nan
    return ap


def mean_average_precision_by_group(
    scores: Any,
    targets: Any,
    groups: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """mAP in % over all classes (``total``) and over each group (e.g. head / medium / tail).

    ``groups`` maps a group name to the class indices in it. Classes without a positive
    (NaN AP) are left out of every mean, with a warning naming them; a group left with no
    class gives NaN.
    """
    ap = average_precision(scores, targets)
    return group_mean_ap(ap, groups, class_names, _stacklevel=3)


def group_mean_ap(
    ap: Any,
    groups: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
    _stacklevel: int = 2,
) -> dict[str, float]:
    """The means of :func:`mean_average_precision_by_group` from per-class AP (C,) already computed."""
    ap = _to_numpy(ap)
    num_classes = ap.shape[0]
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    missing = np.flatnonzero(np.isnan(ap))
    if missing.size:
        labels = ", ".join(_class_label(int(c), class_names) for c in missing)
        warnings.warn(
            f"classes without a positive example are left out of the mAP: {labels}",
            RuntimeWarning,
            stacklevel=_stacklevel,
        )
    result = {"total": _nan_mean_percent(ap)}
    for name, indices in groups.items():
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out_of_range = indices[(indices < 0) | (indices >= num_classes)]
        if out_of_range.size:
            raise ValueError(
                f"group {name!r} holds class indices {out_of_range.tolist()} "
                f"outside 0..{num_classes - 1}"
            )
        result[name] = _nan_mean_percent(ap[indices])
        if np.isnan(result[name]):
            warnings.warn(
                f"group {name!r} has no class with a positive example; its mAP is NaN",
                RuntimeWarning,
                stacklevel=_stacklevel,
            )
    return result


def _nan_mean_percent(values: np.ndarray) -> float:
    valid = values[~np.isnan(values)]
    return float(100.0 * valid.mean()) if valid.size else float("nan")


def f1_scores(scores: Any, targets: Any, threshold: float = 0.5) -> dict[str, float]:
    """Per-class (CP, CR, CF1) and overall (OP, OR, OF1) precision / recall / F1, in %.

    ``scores`` are probabilities; a label is predicted where score >= threshold. The
    definitions are the multi-label literature's (ML-GCN, ASL): CP and CR are means over
    classes of the per-class precision and recall, CF1 = 2 CP CR / (CP + CR); OP, OR and OF1
    pool all (image, class) pairs. A ratio with a zero denominator counts as 0 (a class never
    predicted has precision 0; a class without positives has recall 0), as scikit-learn's
    ``zero_division=0``.
    """
    scores, targets = _check_scores_targets(scores, targets)
    predicted = scores >= threshold
    positive = targets == 1
    true_pos = (predicted & positive).sum(axis=0).astype(np.float64)
    num_predicted = predicted.sum(axis=0).astype(np.float64)
    num_positive = positive.sum(axis=0).astype(np.float64)
    per_class_precision = _safe_ratio(true_pos, num_predicted)
    per_class_recall = _safe_ratio(true_pos, num_positive)
    cp = float(per_class_precision.mean())
    cr = float(per_class_recall.mean())
    op = float(_safe_ratio(true_pos.sum(), num_predicted.sum()))
    orr = float(_safe_ratio(true_pos.sum(), num_positive.sum()))
    return {
        "CP": 100.0 * cp,
        "CR": 100.0 * cr,
        "CF1": 100.0 * float(_safe_ratio(2 * cp * cr, cp + cr)),
        "OP": 100.0 * op,
        "OR": 100.0 * orr,
        "OF1": 100.0 * float(_safe_ratio(2 * op * orr, op + orr)),
    }


def per_class_f1(scores: Any, targets: Any, threshold: float = 0.5) -> np.ndarray:
    """F1 (%) of each class at ``threshold``, (C,); 0 where a class is neither predicted nor
    positive (the same counts as ``f1_scores``)."""
    scores, targets = _check_scores_targets(scores, targets)
    predicted = scores >= threshold
    positive = targets == 1
    true_pos = (predicted & positive).sum(axis=0).astype(np.float64)
    denominator = (predicted.sum(axis=0) + positive.sum(axis=0)).astype(np.float64)
    return 100.0 * _safe_ratio(2 * true_pos, denominator)


def _safe_ratio(numerator: Any, denominator: Any) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def neural_collapse(
    projections: Any,
    targets: Any,
    classifier: Any | None = None,
    min_positives: int = 2,
) -> dict[str, Any]:
    """Neural-collapse diagnostics NC1, NC2, NC3 (Papyan et al. 2020) for multi-label data.

    projections: (N, C, P) per-class projections (MLC-NC's mu_i^c): class c's samples are
                 ``projections[i, c]`` for the images i positive for c. Or (N, D) features
                 shared by all classes: class c's samples are ``features[i]`` for its positives.
    targets:     (N, C) multi-hot labels.
    classifier:  optional (D, C) classifier whose columns score the classes, e.g. MLC-NC's
                 ETF classifier (D = C*P) or a linear layer's ``weight.T``.

    Class means mu_c are means over a class's positives; the global mean mu_G is the mean of
    the class means (every class weighs the same, so the head classes of a long tail do not
    dominate it). Only classes with at least ``min_positives`` positives take part; the others
    are listed in ``excluded_classes`` (with a warning). K is the number of classes taking part.

    - ``nc1`` = Tr(Sw Sb^+) / K, with Sw the mean over classes of the within-class
      covariances and Sb the covariance of the class means around mu_G. 0 = collapsed.
    - ``nc2_equinorm`` = std / mean of the norms ||mu_c - mu_G||. 0 = equal norms.
    - ``nc2_cos_mean_dev`` / ``nc2_cos_max_dev`` = mean / max over class pairs of
      |cos(mu_c - mu_G, mu_k - mu_G) + 1/(K-1)|. 0 = a simplex ETF. A simplex ETF of K
      vectors needs K-1 dimensions: with (N, C, P) projections and P < K-1 (MLC-NC's
      P = 20 on COCO's 80 classes) these deviations cannot reach 0.
    - ``nc3`` = mean over classes of 1 - cos(m_c - m_G, w_c), with w_c the classifier's column
      c, in [0, 2]; 0 = class means aligned with the classifier (self-duality). It is measured
      where the classifier acts: for (N, C, P) projections, image i's classifier input is the
      class-major concatenation of its C projections (length D = C*P, the vector MLC-NC's
      ETF classifier multiplies), and m_c is the mean of that concatenation over class c's
      positives. For (N, D) features, m_c = mu_c. None without a classifier.

    Also returned: ``cosine`` (C, C), the cosines of the centred class means (NaN in the rows
    and columns of excluded classes, so indices match class names); ``ideal_cosine`` =
    -1/(K-1); ``classifier_cosine`` (C, C), the cosines between classifier columns (ideal
    -1/(C-1) for an ETF), or None; ``class_counts`` (C,); ``valid_classes``; ``excluded_classes``.
    """
    features = _to_numpy(projections)
    labels = _to_numpy(targets)
    per_class = _check_collapse_inputs(features, labels)
    class_counts = labels.sum(axis=0)
    valid, excluded = _classes_taking_part(class_counts, min_positives)
    num_classes = labels.shape[1]
    weights = (
        None
        if classifier is None
        else _classifier_weights(classifier, features, per_class, num_classes)
    )
    result: dict[str, Any] = {
        "nc1": float("nan"),
        "nc2_equinorm": float("nan"),
        "nc2_cos_mean_dev": float("nan"),
        "nc2_cos_max_dev": float("nan"),
        "nc3": None if classifier is None else float("nan"),
        "cosine": np.full((num_classes, num_classes), np.nan),
        "ideal_cosine": float("nan"),
        "classifier_cosine": None if weights is None else _cosine_matrix(weights.T),
        "class_counts": class_counts.astype(np.int64),
        "valid_classes": valid,
        "excluded_classes": excluded,
    }
    if valid.size < 2:
        warnings.warn(
            f"neural-collapse diagnostics need 2 classes with >= {min_positives} positives; "
            f"found {valid.size}: the values are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        return result
    weight = labels[:, valid] / class_counts[valid]  # (N, K): averages over class positives
    class_means, within = _class_means_and_within(features, weight, valid, per_class)
    centred_means = class_means - class_means.mean(axis=0)  # (K, P or D), around mu_G
    result.update(_nc1_nc2(centred_means, within))
    result["cosine"][np.ix_(valid, valid)] = _cosine_matrix(centred_means)
    if weights is not None:
        result["nc3"] = _nc3(features, weight, class_means, weights[:, valid], per_class)
    return result


def _check_collapse_inputs(features: np.ndarray, labels: np.ndarray) -> bool:
    """Check ``neural_collapse``'s projections and targets; True for (N, C, P) projections."""
    if labels.ndim != 2:
        raise ValueError(f"targets must be (N, C); got shape {labels.shape}")
    num_images, num_classes = labels.shape
    per_class = features.ndim == 3
    if features.ndim not in (2, 3) or features.shape[0] != num_images:
        raise ValueError(
            f"projections must be (N, C, P) or (N, D) with N = {num_images} as in targets; "
            f"got shape {features.shape}"
        )
    if per_class and features.shape[1] != num_classes:
        raise ValueError(
            f"projections {features.shape} have {features.shape[1]} classes, "
            f"targets {labels.shape} have {num_classes}"
        )
    if not np.isfinite(features).all():
        raise ValueError("projections contain NaN or infinity")
    bad_targets = np.flatnonzero(((labels != 0) & (labels != 1)).any(axis=0))
    if bad_targets.size:
        raise ValueError(
            f"targets must be 0 or 1; classes {bad_targets.tolist()} hold other values"
        )
    return per_class


def _classes_taking_part(
    class_counts: np.ndarray, min_positives: int
) -> tuple[np.ndarray, np.ndarray]:
    """(valid, excluded) class indices: at least ``min_positives`` positives or fewer; a
    warning (for ``neural_collapse``'s caller) names the excluded ones."""
    valid = np.flatnonzero(class_counts >= min_positives)
    excluded = np.flatnonzero(class_counts < min_positives)
    if excluded.size:
        warnings.warn(
            f"neural-collapse diagnostics leave out classes {excluded.tolist()} "
            f"with fewer than {min_positives} positives",
            RuntimeWarning,
            stacklevel=3,
        )
    return valid, excluded


def _classifier_weights(
    classifier: Any, features: np.ndarray, per_class: bool, num_classes: int
) -> np.ndarray:
    """The (D, C) classifier as numpy, checked against the projections' D and C."""
    weights = _to_numpy(classifier)
    expected_rows = features.shape[1] * features.shape[2] if per_class else features.shape[1]
    if weights.shape != (expected_rows, num_classes):
        raise ValueError(
            f"classifier must be (D, C) = ({expected_rows}, {num_classes}) for projections "
            f"{features.shape}; got {weights.shape} (pass a linear layer's weight.T)"
        )
    return weights


def _class_means_and_within(
    features: np.ndarray, weight: np.ndarray, valid: np.ndarray, per_class: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Class means mu_c (K, P or D) and Sw, the mean over classes of the within-class
    covariances; ``weight`` (N, K) averages over each class's positives."""
    num_valid = valid.size
    if per_class:
        samples = features[:, valid]  # (N, K, P)
        class_means = np.einsum("nk,nkp->kp", weight, samples)
        centred = samples - class_means[None]
        within = np.einsum("nk,nkp,nkq->pq", weight, centred, centred) / num_valid
    else:
        class_means = weight.T @ features  # (K, D)
        # sum_k (1/n_k) sum_{i in k} x_i x_i^T - mu_k mu_k^T, without a (N, K, D) array.
        second_moment = (features * weight.sum(axis=1, keepdims=True)).T @ features
        within = (second_moment - class_means.T @ class_means) / num_valid
    return class_means, within


def _nc1_nc2(centred_means: np.ndarray, within: np.ndarray) -> dict[str, float]:
    """NC1 from Sw and the between-class covariance; NC2's equinorm and cosine deviations."""
    num_valid = len(centred_means)
    between = centred_means.T @ centred_means / num_valid
    between_pinv = np.linalg.pinv(between, hermitian=True)
    norms = np.linalg.norm(centred_means, axis=1)
    ideal = -1.0 / (num_valid - 1)
    off_diagonal = ~np.eye(num_valid, dtype=bool)
    deviation = np.abs(_cosine_matrix(centred_means) - ideal)[off_diagonal]
    return {
        "nc1": float(np.sum(within * between_pinv.T) / num_valid),
        "nc2_equinorm": float(norms.std() / norms.mean()),
        "nc2_cos_mean_dev": float(deviation.mean()),
        "nc2_cos_max_dev": float(deviation.max()),
        "ideal_cosine": ideal,
    }


def _nc3(
    features: np.ndarray,
    weight: np.ndarray,
    class_means: np.ndarray,
    columns: np.ndarray,
    per_class: bool,
) -> float:
    """NC3: mean of 1 - cos(m_c - m_G, w_c) over the classes taking part (``columns`` are
    their classifier columns, (D, K))."""
    if per_class:  # class means of the concatenated (class-major) classifier input
        concatenated = features.reshape(len(features), -1)
        classifier_means = weight.T @ concatenated  # (K, C*P)
    else:
        classifier_means = class_means
    centred_classifier_means = classifier_means - classifier_means.mean(axis=0)
    alignment = _row_cosines(centred_classifier_means, columns.T)
    return float(np.mean(1.0 - alignment))


def _cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """(K, D) -> (K, K) pairwise cosines; a zero vector gives NaN rather than a division error."""
    norms = np.linalg.norm(vectors, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = vectors / norms[:, None]
    return np.clip(unit @ unit.T, -1.0, 1.0)


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between row k of a and row k of b, (K, D) x (K, D) -> (K,)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
