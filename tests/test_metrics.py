"""Metrics against plain references: scikit-learn for AP and F1, loops from the definitions for NC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_score, recall_score

from mlcnc.metrics import (
    SCORES,
    average_precision,
    f1_scores,
    group_mean_ap,
    mean_average_precision_by_group,
    neural_collapse,
)


def random_problem(seed: int, num_images: int = 60, num_classes: int = 7, tied: bool = False):
    rng = np.random.default_rng(seed)
    targets = (rng.random((num_images, num_classes)) < 0.3).astype(np.uint8)
    targets[0] = 1  # every class has a positive
    scores = rng.random((num_images, num_classes))
    if tied:  # few distinct values: many ties, where sklearn's definition matters
        scores = np.round(scores * 4) / 4
    return scores, targets


# ---------------------------------------------------------------- average precision


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_sklearn(seed, tied):
    scores, targets = random_problem(seed, tied=tied)
    expected = [average_precision_score(targets[:, c], scores[:, c]) for c in range(7)]
    np.testing.assert_allclose(average_precision(scores, targets), expected, rtol=0, atol=1e-12)


def test_average_precision_perfect_and_worst_ranking():
    targets = np.array([[1], [1], [0], [0]])
    assert average_precision(np.array([[0.9], [0.8], [0.2], [0.1]]), targets)[0] == 1.0
    # positives ranked last: precisions 1/3 and 2/4
    worst = average_precision(np.array([[0.1], [0.2], [0.8], [0.9]]), targets)[0]
    assert worst == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_average_precision_all_tied_equals_prevalence():
    targets = np.array([[1], [0], [0], [1], [0]])
    assert average_precision(np.full((5, 1), 0.5), targets)[0] == pytest.approx(0.4)


def test_average_precision_nan_for_class_without_positives_and_accepts_torch():
    scores, targets = random_problem(3)
    targets[:, 2] = 0
    ap = average_precision(torch.from_numpy(scores).float(), torch.from_numpy(targets))
    assert np.isnan(ap[2])
    assert np.isfinite(np.delete(ap, 2)).all()
    expected = average_precision_score(targets[:, 0], scores[:, 0].astype(np.float32))
    assert ap[0] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("scores", "targets", "message"),
    [
        (np.zeros((4, 3)), np.zeros((4, 2)), "differ in shape"),
        (np.zeros(4), np.zeros(4), r"must be \(N, C\)"),
        (np.array([[0.1, np.nan]]), np.array([[1, 0]]), r"classes \[1\] contain NaN"),
        (np.zeros((2, 2)), np.array([[1, 2], [0, 1]]), r"classes \[1\] hold other values"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "no images"),
    ],
)
def test_average_precision_bad_input(scores, targets, message):
    with pytest.raises(ValueError, match=message):
        average_precision(scores, targets)


# ---------------------------------------------------------------- mAP by group


def test_map_by_group_means_in_percent():
    scores, targets = random_problem(4)
    groups = {"head": [0, 1], "medium": [2, 3, 4], "tail": [5, 6]}
    ap = np.array([average_precision_score(targets[:, c], scores[:, c]) for c in range(7)])
    result = mean_average_precision_by_group(scores, targets, groups)
    assert set(result) == {"total", "head", "medium", "tail"}
    assert result["total"] == pytest.approx(100 * ap.mean())
    assert result["head"] == pytest.approx(100 * ap[:2].mean())
    assert result["medium"] == pytest.approx(100 * ap[2:5].mean())
    assert result["tail"] == pytest.approx(100 * ap[5:].mean())


def test_map_by_group_excludes_classes_without_positives_with_a_warning():
    scores, targets = random_problem(5)
    targets[:, [5, 6]] = 0
    groups = {"head": np.array([0, 1]), "medium": np.array([2, 3, 4]), "tail": np.array([5, 6])}
    names = [f"class{c}" for c in range(7)]
    with pytest.warns(RuntimeWarning) as record:
        result = mean_average_precision_by_group(scores, targets, groups, class_names=names)
    messages = " ".join(str(w.message) for w in record)
    assert "5 (class5)" in messages and "6 (class6)" in messages
    assert "'tail' has no class" in messages
    assert np.isnan(result["tail"])
    ap = average_precision(scores, targets)
    assert result["total"] == pytest.approx(100 * ap[:5].mean())


def test_group_mean_ap_rejects_out_of_range_group():
    with pytest.raises(ValueError, match=r"group 'tail' holds class indices \[9\]"):
        group_mean_ap(np.ones(3), {"tail": [1, 9]})


# ---------------------------------------------------------------- F1


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_f1_scores_match_sklearn(threshold):
    scores, targets = random_problem(6)
    targets[:, 3] = 0  # a class without positives: recall 0, not NaN
    predicted = (scores >= threshold).astype(int)
    cp = precision_score(targets, predicted, average="macro", zero_division=0)
    cr = recall_score(targets, predicted, average="macro", zero_division=0)
    op = precision_score(targets, predicted, average="micro", zero_division=0)
    orr = recall_score(targets, predicted, average="micro", zero_division=0)
    result = f1_scores(scores, targets, threshold)
    assert result["CP"] == pytest.approx(100 * cp)
    assert result["CR"] == pytest.approx(100 * cr)
    assert result["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))
    assert result["OP"] == pytest.approx(100 * op)
    assert result["OR"] == pytest.approx(100 * orr)
    assert result["OF1"] == pytest.approx(100 * 2 * op * orr / (op + orr))
    assert all(np.isfinite(v) for v in result.values())


def test_f1_scores_nothing_predicted_is_zero_not_nan():
    result = f1_scores(np.zeros((3, 2)), np.array([[1, 0], [0, 1], [1, 1]]))
    assert result == {"CP": 0.0, "CR": 0.0, "CF1": 0.0, "OP": 0.0, "OR": 0.0, "OF1": 0.0}


# ---------------------------------------------------------------- neural collapse


def simplex_etf(dim: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """(dim, C) simplex ETF: unit columns, pairwise cosine -1/(C-1)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, num_classes)))
    centring = np.eye(num_classes) - np.ones((num_classes, num_classes)) / num_classes
    return np.sqrt(num_classes / (num_classes - 1)) * basis @ centring


def multilabel_targets(num_images: int, num_classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    targets = (rng.random((num_images, num_classes)) < 0.4).astype(np.float64)
    targets[np.arange(num_images), np.arange(num_images) % num_classes] = 1
    return targets


def reference_nc(samples_of_class, classifier_means=None, classifier=None):
    """NC metrics with plain loops, straight from the definitions in the docstring."""
    means = [np.mean(s, axis=0) for s in samples_of_class]
    num = len(means)
    global_mean = np.mean(means, axis=0)
    dim = means[0].shape[0]
    within = np.zeros((dim, dim))
    for samples, mean in zip(samples_of_class, means, strict=True):
        for x in samples:
            within += np.outer(x - mean, x - mean) / len(samples)
    within /= num
    between = np.zeros((dim, dim))
    for mean in means:
        between += np.outer(mean - global_mean, mean - global_mean)
    between /= num
    nc1 = np.trace(within @ np.linalg.pinv(between)) / num
    centred = [m - global_mean for m in means]
    norms = [np.linalg.norm(m) for m in centred]
    deviations = []
    for a in range(num):
        for b in range(num):
            if a != b:
                cos = centred[a] @ centred[b] / (norms[a] * norms[b])
                deviations.append(abs(cos + 1 / (num - 1)))
    result = {
        "nc1": nc1,
        "nc2_equinorm": np.std(norms) / np.mean(norms),
        "nc2_cos_mean_dev": np.mean(deviations),
        "nc2_cos_max_dev": np.max(deviations),
    }
    if classifier is not None:
        cm_global = np.mean(classifier_means, axis=0)
        nc3 = 0.0
        for c, m in enumerate(classifier_means):
            m = m - cm_global
            w = classifier[:, c]
            nc3 += 1 - m @ w / (np.linalg.norm(m) * np.linalg.norm(w))
        result["nc3"] = nc3 / num
    return result


def test_neural_collapse_per_class_matches_loop_reference():
    num_images, num_classes, dim = 40, 5, 6
    rng = np.random.default_rng(0)
    projections = rng.standard_normal((num_images, num_classes, dim))
    targets = multilabel_targets(num_images, num_classes, seed=1)
    classifier = rng.standard_normal((num_classes * dim, num_classes))
    samples = [projections[targets[:, c] == 1, c] for c in range(num_classes)]
    concatenated = projections.reshape(num_images, -1)
    classifier_means = [concatenated[targets[:, c] == 1].mean(axis=0) for c in range(num_classes)]
    expected = reference_nc(samples, classifier_means, classifier)
    result = neural_collapse(torch.from_numpy(projections), targets, classifier)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-9), key


def test_neural_collapse_features_match_loop_reference():
    num_images, num_classes, dim = 50, 4, 9
    rng = np.random.default_rng(2)
    features = rng.standard_normal((num_images, dim)) + 3.0
    targets = multilabel_targets(num_images, num_classes, seed=3)
    classifier = rng.standard_normal((dim, num_classes))
    samples = [features[targets[:, c] == 1] for c in range(num_classes)]
    means = [s.mean(axis=0) for s in samples]
    expected = reference_nc(samples, means, classifier)
    result = neural_collapse(features, targets, classifier)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-7), key
    assert result["cosine"].shape == (num_classes, num_classes)
    np.testing.assert_allclose(np.diag(result["cosine"]), 1.0)


def collapsed_configuration(num_images: int, num_classes: int, dim: int, seed: int):
    """Every projection of an image of class c is the ETF vector e_c, so the class-major
    concatenation is e_c tiled C times; the classifier columns are those tiles normalised,
    a simplex ETF in C*P dimensions."""
    etf = simplex_etf(dim, num_classes, seed)  # (P, C)
    labels = np.arange(num_images) % num_classes
    targets = np.eye(num_classes)[labels]
    projections = np.repeat(etf.T[labels][:, None, :], num_classes, axis=1)  # (N, C, P)
    classifier = np.tile(etf, (num_classes, 1)) / np.sqrt(num_classes)  # (C*P, C)
    return projections, targets, classifier


def test_perfect_collapse_gives_zero_diagnostics():
    num_classes = 5
    projections, targets, classifier = collapsed_configuration(30, num_classes, 8, seed=0)
    np.testing.assert_allclose(classifier.T @ classifier, simplex_etf(8, 5).T @ simplex_etf(8, 5))
    result = neural_collapse(projections, targets, classifier)
    assert result["nc1"] == pytest.approx(0, abs=1e-10)
    assert result["nc2_equinorm"] == pytest.approx(0, abs=1e-10)
    assert result["nc2_cos_mean_dev"] == pytest.approx(0, abs=1e-10)
    assert result["nc2_cos_max_dev"] == pytest.approx(0, abs=1e-10)
    assert result["nc3"] == pytest.approx(0, abs=1e-10)
    assert result["ideal_cosine"] == pytest.approx(-1 / (num_classes - 1))
    off_diagonal = ~np.eye(num_classes, dtype=bool)
    np.testing.assert_allclose(result["cosine"][off_diagonal], -1 / (num_classes - 1))
    np.testing.assert_allclose(result["classifier_cosine"][off_diagonal], -1 / (num_classes - 1))


def test_noise_raises_every_diagnostic():
    projections, targets, classifier = collapsed_configuration(60, 5, 8, seed=1)
    rng = np.random.default_rng(4)
    previous = neural_collapse(projections, targets, classifier)
    for scale in (0.1, 0.5):
        noisy = projections + scale * rng.standard_normal(projections.shape)
        result = neural_collapse(noisy, targets, classifier)
        for key in ("nc1", "nc2_equinorm", "nc2_cos_mean_dev", "nc2_cos_max_dev", "nc3"):
            assert result[key] > previous[key] + 1e-6, (scale, key)
        previous = result
    assert previous["nc1"] > 0.01


def test_misaligned_classifier_gives_large_nc3():
    projections, targets, classifier = collapsed_configuration(30, 5, 8, seed=2)
    shuffled = classifier[:, [1, 2, 3, 4, 0]]  # each class paired with another's column
    result = neural_collapse(projections, targets, shuffled)
    assert result["nc3"] == pytest.approx(1 + 1 / 4)  # 1 - (-1/(C-1))
    assert result["nc1"] == pytest.approx(0, abs=1e-10)


def test_classes_with_too_few_positives_are_excluded_and_reported():
    projections, targets, classifier = collapsed_configuration(30, 5, 8, seed=3)
    targets[:, 4] = 0
    targets[0, 4] = 1  # one positive only
    with pytest.warns(RuntimeWarning, match=r"classes \[4\]"):
        result = neural_collapse(projections, targets, classifier)
    assert result["excluded_classes"].tolist() == [4]
    assert result["valid_classes"].tolist() == [0, 1, 2, 3]
    assert np.isnan(result["cosine"][4]).all() and np.isnan(result["cosine"][:, 4]).all()
    assert np.isfinite(result["cosine"][:4, :4]).all()
    assert result["ideal_cosine"] == pytest.approx(-1 / 3)
    # four vertices of a 5-simplex, centred by their own mean, are a 4-class simplex ETF
    assert result["nc2_cos_max_dev"] == pytest.approx(0, abs=1e-10)
    assert result["class_counts"].tolist() == [6, 6, 6, 6, 1]


def test_fewer_than_two_valid_classes_gives_nan_not_a_crash():
    projections, targets, _ = collapsed_configuration(6, 3, 4, seed=0)
    targets[:, 1:] = 0
    with pytest.warns(RuntimeWarning) as record:
        result = neural_collapse(projections, targets)
    messages = [str(w.message) for w in record]
    assert any("leave out classes [1, 2]" in m for m in messages)
    assert any("need 2 classes" in m for m in messages)
    assert np.isnan(result["nc1"]) and result["nc3"] is None


@pytest.mark.parametrize(
    ("projections_shape", "classifier_shape", "message"),
    [
        ((10, 4, 3), None, "have 4 classes"),
        ((9, 3, 3), None, "N = 10"),
        ((10, 3, 3), (3, 9), r"classifier must be \(D, C\) = \(9, 3\)"),
    ],
)
def test_neural_collapse_bad_shapes(projections_shape, classifier_shape, message):
    targets = multilabel_targets(10, 3, seed=0)
    classifier = None if classifier_shape is None else np.ones(classifier_shape)
    with pytest.raises(ValueError, match=message):
        neural_collapse(np.ones(projections_shape), targets, classifier)


# --------------------------------------------------------------------------------------
# what AP ranks: the logits (mlcnc) or a softmax over classes (LMPT / LM-CLIP protocol)


def test_softmax_scores_ap_matches_sklearn_on_a_plain_softmax():
    from scipy.special import softmax

    from mlcnc.metrics import ranking_scores

    rng = np.random.default_rng(3)
    logits = rng.normal(scale=3.0, size=(40, 6)).astype(np.float32)
    targets = multilabel_targets(40, 6, seed=4)
    reference = softmax(logits.astype(np.float64), axis=1)  # per image, over classes
    expected = [average_precision_score(targets[:, c], reference[:, c]) for c in range(6)]
    got = average_precision(ranking_scores(logits, "softmax"), targets)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_array_equal(ranking_scores(logits, "logits"), logits.astype(np.float64))
    with pytest.raises(ValueError, match=r"'probs'.*logits, softmax"):
        ranking_scores(logits, "probs")


def test_toy_case_where_softmax_and_logits_ap_differ_is_detected():
    """Class 0's positive (image 1) has the lowest logit but the highest softmax share:
    AP 1/3 on logits, 1 on softmax (sklearn on both); score_predictions follows the option."""
    from scipy.special import softmax

    from mlcnc.engine.evaluation import Predictions, score_predictions

    logits = np.array([[2.0, 0.0], [0.0, -3.0], [1.0, 1.0]], dtype=np.float32)
    targets = np.array([[0, 1], [1, 0], [0, 1]], dtype=np.uint8)
    by_logits = average_precision_score(targets[:, 0], logits[:, 0])
    by_softmax = average_precision_score(targets[:, 0], softmax(logits, axis=1)[:, 0])
    assert by_logits == pytest.approx(1 / 3) and by_softmax == pytest.approx(1.0)
    predictions = Predictions(indices=np.arange(3), logits=logits, targets=targets)
    groups = {"head": np.array([0, 1])}
    for scores, expected in (("logits", by_logits), ("softmax", by_softmax)):
        scored = score_predictions(predictions, groups, ["a", "b"], scores=scores)
        assert scored["ap"][0] == pytest.approx(expected)
    # F1 keeps the sigmoid threshold whatever AP ranks
    f1 = [score_predictions(predictions, groups, ["a", "b"], scores=s)["f1"] for s in SCORES]
    assert f1[0] == f1[1]
