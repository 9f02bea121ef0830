"""CB-Focal (DB's), ASL (its authors' settings) and MFM (COMIC's) against loops written from
their reference formulas, entry by entry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlcnc.data.cooccurrence import conditional_probabilities, cooccurrence_counts
from mlcnc.losses.asymmetric import AsymmetricCriterion, asymmetric_loss
from mlcnc.losses.class_balanced_focal import (
    CB_MODES,
    ClassBalancedFocalCriterion,
    class_balanced_focal_loss,
    effective_number_weights,
)
from mlcnc.losses.mfm import MultiFocalModifierCriterion
from mlcnc.models.output import ModelOutput

CLASS_FREQ = [50.0, 20.0, 7.0, 3.0, 1.0]
CB = {"beta": 0.9, "gamma": 2.0, "mode": "average_w", "balance_param": 2.0}
ASL = {
    "gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05, "eps": 1e-8,
    "detach_focal_weight": True, "reduction": "sum",
}  # fmt: skip
MFM = {
    "gamma_neg": 3.0, "gamma_pos": 0.0, "clip": 0.05, "class_neg_scale": 1.2,
    "weight_power": 1.0 / 3.0, "eps": 1e-8, "detach_focal_weight": True, "reduction": "sum",
}  # fmt: skip


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(z: float, y: float) -> float:
    return math.log1p(math.exp(-z)) if y == 1 else math.log1p(math.exp(z))


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 5, generator=g, dtype=torch.float64) * 2
    targets = (torch.rand(7, 5, generator=g) < 0.4).double()
    targets[0] = 0.0  # a row without positives
    targets[1] = torch.tensor([1.0, 0, 0, 1, 0])
    targets[2] = torch.tensor([0.0, 0, 0, 0, 1])
    return logits, targets


# --------------------------------------------------------------------------- CB-Focal
def cb_weight_reference(row: list[float], c: int, beta: float, mode: str) -> float:
    """The weight of entry (row, c) from DB's CB_weight definitions, by hand."""

    def inv_eff(n: float) -> float:
        return (1 - beta) / (1 - beta**n)

    positives = [k for k, v in enumerate(row) if v == 1]
    if mode == "by_class":
        return inv_eff(CLASS_FREQ[c])
    if mode == "average_w":
        if not positives:  # mlcnc's choice for DB's 0/0: the mean over all classes
            return sum(inv_eff(n) for n in CLASS_FREQ) / len(CLASS_FREQ)
        return sum(inv_eff(CLASS_FREQ[k]) for k in positives) / len(positives)
    if mode == "average_n":
        pool = positives or list(range(len(CLASS_FREQ)))
        return inv_eff(sum(CLASS_FREQ[k] for k in pool) / len(pool))
    assert mode == "min_n"
    return inv_eff(min([CLASS_FREQ[k] for k in positives] or [100000.0]))


def cb_focal_reference(logits, targets, beta: float, gamma: float, mode: str) -> float:
    total = []
    for b in range(logits.shape[0]):
        row = targets[b].tolist()
        for c in range(logits.shape[1]):
            z, y = float(logits[b, c]), row[c]
            entry = bce(z, y)
            p_t = math.exp(-entry)  # sigmoid(z) for a positive, sigmoid(-z) for a negative
            w = cb_weight_reference(row, c, beta, mode)
            total.append(2.0 * (1 - p_t) ** gamma * w * entry)
    return float(np.mean(total))


@pytest.mark.parametrize("mode", CB_MODES)
@pytest.mark.parametrize("beta", [0.9, 0.99])
def test_cb_focal_matches_db_formula_entry_by_entry(batch, mode: str, beta: float) -> None:
    logits, targets = batch
    freq = torch.tensor(CLASS_FREQ)
    got = class_balanced_focal_loss(logits, targets, freq, **{**CB, "beta": beta, "mode": mode})
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(
        cb_focal_reference(logits, targets, beta, 2.0, mode), rel=1e-5
    )


def test_cb_focal_average_w_weights_whole_rows_and_by_class_whole_columns(batch) -> None:
    logits, targets = batch
    freq = torch.tensor(CLASS_FREQ)
    weights = effective_number_weights(CLASS_FREQ, 0.9)
    assert torch.allclose(
        weights, torch.tensor([(1 - 0.9) / (1 - 0.9**n) for n in CLASS_FREQ]), rtol=1e-6
    )
    entries = class_balanced_focal_loss(logits, targets, freq, **CB, reduction="none")
    plain = class_balanced_focal_loss(
        logits, targets, freq, **{**CB, "beta": 0.0}, reduction="none"
    )
    ratio = entries / plain  # beta 0 gives every weight 1, so the ratio is the weight
    # Row 1 has positives 0 and 3: every entry of the row, negatives too, weighs their mean.
    assert torch.allclose(ratio[1], ((weights[0] + weights[3]) / 2).expand(5), rtol=1e-5)
    assert torch.allclose(ratio[2], weights[4].expand(5), rtol=1e-5)
    by_class = class_balanced_focal_loss(
        logits, targets, freq, **{**CB, "mode": "by_class"}, reduction="none"
    )
    assert torch.allclose(by_class / plain, weights.expand(7, 5), rtol=1e-5)


@pytest.mark.parametrize("mode", CB_MODES)
def test_cb_focal_finite_everywhere(mode: str) -> None:
    logits = torch.tensor(
        [[40.0, -40.0, 0.0, 100.0, -100.0], [0.5, -0.5, 3.0, -3.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0]],
        requires_grad=True,
    )
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0], [0.0] * 5, [1.0] * 5])
    criterion = ClassBalancedFocalCriterion(CLASS_FREQ, **{**CB, "mode": mode})
    out = criterion(ModelOutput(logits=logits), targets)
    assert torch.isfinite(out["total"])
    out["total"].backward()
    assert torch.isfinite(logits.grad).all()
    per_entry = class_balanced_focal_loss(
        logits.detach(),
        targets,
        torch.tensor(CLASS_FREQ),
        **{**CB, "mode": mode},
        reduction="none",
    )
    assert torch.isfinite(per_entry).all()


def test_cb_focal_criterion_defaults_and_refusals() -> None:
    criterion = ClassBalancedFocalCriterion(CLASS_FREQ, **CB)
    assert (criterion.beta, criterion.gamma, criterion.mode, criterion.balance_param) == (
        0.9,
        2.0,
        "average_w",
        2.0,
    )
    with pytest.raises(ValueError, match="mode must be one of"):
        ClassBalancedFocalCriterion(CLASS_FREQ, **{**CB, "mode": "average"})
    with pytest.raises(ValueError, match="beta"):
        ClassBalancedFocalCriterion(CLASS_FREQ, **{**CB, "beta": 1.0})


# --------------------------------------------------------------------------- ASL
def asl_reference(z: float, y: float, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8) -> float:
    """The authors' AsymmetricLoss, one entry, with their eps clamp."""
    p = sigmoid(z)
    if y == 1:
        return -((1 - p) ** gamma_pos) * math.log(max(p, eps))
    p_m = max(p - clip, 0.0)
    return -(p_m**gamma_neg) * math.log(max(1 - p_m, eps))


def test_asl_defaults_are_the_training_script_and_sum(batch) -> None:
    logits, targets = batch
    expected = sum(
        asl_reference(float(logits[b, c]), float(targets[b, c]))
        for b in range(logits.shape[0])
        for c in range(logits.shape[1])
    )
    assert asymmetric_loss(logits, targets, **ASL).item() == pytest.approx(expected, rel=1e-5)
    out = AsymmetricCriterion(**ASL)(ModelOutput(logits=logits), targets)
    assert out["total"].item() == pytest.approx(expected, rel=1e-5)
    mean = AsymmetricCriterion(**{**ASL, "reduction": "mean"})(ModelOutput(logits=logits), targets)
    assert mean["total"].item() == pytest.approx(expected / logits.numel(), rel=1e-5)


def test_asl_eps_clamp_as_authors() -> None:
    # A badly wrong positive: log(max(p, 1e-8)) is constant, so it has no gradient.
    z = torch.tensor([[-30.0]], requires_grad=True)
    loss = asymmetric_loss(z, torch.ones(1, 1), **ASL)
    assert loss.item() == pytest.approx(-math.log(1e-8), rel=1e-6)
    loss.backward()
    assert z.grad.item() == 0.0


def test_asl_focal_weight_is_detached_by_default() -> None:
    z = torch.tensor([[1.5, -0.3, 2.0, 0.7]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    asymmetric_loss(z, y, **{**ASL, "gamma_pos": 1.0}).backward()
    expected = []
    for zi, yi in zip(z.detach()[0].tolist(), y[0].tolist(), strict=True):
        p = sigmoid(zi)
        if yi == 1:  # d/dz of -w log p with w = (1 - p) constant: -w (1 - p)
            expected.append(-(1 - p) * (1 - p))
        else:  # d/dz of -w log(1 - p_m), p_m = p - clip > 0, w = p_m^4 constant
            p_m = p - 0.05
            expected.append(p_m**4 * p * (1 - p) / (1 - p_m))
    assert torch.allclose(z.grad[0].float(), torch.tensor(expected).float(), rtol=1e-5)
    # With the weights in the graph the gradient is that of the full formula.
    z2 = z.detach().clone().requires_grad_(True)
    asymmetric_loss(z2, y, **{**ASL, "gamma_pos": 1.0, "detach_focal_weight": False}).backward()
    step = 1e-2  # float32 losses: a wide central difference
    for k in range(4):
        bump = torch.zeros_like(z2)
        bump[0, k] = step
        numeric = (
            asymmetric_loss(
                z2.detach() + bump, y, **{**ASL, "gamma_pos": 1.0, "detach_focal_weight": False}
            )
            - asymmetric_loss(
                z2.detach() - bump, y, **{**ASL, "gamma_pos": 1.0, "detach_focal_weight": False}
            )
        ) / (2 * step)
        assert z2.grad[0, k].item() == pytest.approx(numeric.item(), rel=1e-3)


def test_asl_sum_and_mean_reductions(batch) -> None:
    """ASL's sum under DDP (world size x the local sum) is checked with two real gloo
    processes in tests/test_ddp_losses.py, for every registered method."""
    logits, targets = batch
    full = AsymmetricCriterion(**ASL)(ModelOutput(logits=logits), targets)["total"]
    mean = AsymmetricCriterion(**{**ASL, "reduction": "mean"})(ModelOutput(logits=logits), targets)[
        "total"
    ]
    assert mean.item() == pytest.approx(full.item() / logits.numel(), rel=1e-6)  # not scaled


# --------------------------------------------------------------------------- MFM
LABELS = np.array(
    [[1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 1, 0, 1, 0], [0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]
    + [[1, 0, 0, 0, 0]] * 5
    + [[0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
)


def test_cooccurrence_statistics_match_loops() -> None:
    counts = cooccurrence_counts(LABELS)
    prob = conditional_probabilities(LABELS)
    n = LABELS.sum(axis=0)
    for i in range(5):
        for j in range(5):
            both = sum(1 for row in LABELS if row[i] and row[j])
            assert counts[i, j] == (0 if i == j else both)
            assert prob[i, j] == pytest.approx(0.0 if i == j else both / n[i])
    assert np.array_equal(np.diag(cooccurrence_counts(LABELS, include_diagonal=True)), n)


def mfm_reference(logits, targets, labels, gamma_neg=3.0, gamma_pos=0.0, clip=0.05) -> float:
    """COMIC's PriorFocalModifierLoss, entry by entry, from its definitions."""
    freq = labels.sum(axis=0).astype(float)
    weight = [(1 - math.log(n / freq.max())) ** (1 / 3) for n in freq]
    c = len(freq)
    m = [
        [0.0 if i == j else float(sum(r[i] and r[j] for r in labels)) for j in range(c)]
        for i in range(c)
    ]
    col = [sum(m[i][j] for i in range(c)) for j in range(c)]
    mn = [[m[i][j] / col[j] if col[j] > 0 else 0.0 for j in range(c)] for i in range(c)]
    total = 0.0
    for b in range(logits.shape[0]):
        row = targets[b].tolist()
        positives = [i for i in range(c) if row[i] == 1]
        mean = [
            sum(mn[i][j] for i in positives) / len(positives) if positives else 0.0
            for j in range(c)
        ]
        s = sum(mean)
        att = [v / s if s > 0 else 0.0 for v in mean]
        for k in range(c):
            p = sigmoid(float(logits[b, k]))
            if row[k] == 1:
                xp = p * (1 - att[k])
                total += -weight[k] * (1 - xp) ** gamma_pos * math.log(max(xp, 1e-8))
            else:
                xn = min(1 - p + clip, 1.0)
                if att[k] != 0:
                    xn = min(xn * 1.2, 1.0)
                total += -weight[k] * (1 - xn) ** (gamma_neg + weight[k]) * math.log(max(xn, 1e-8))
    return total


def test_mfm_matches_comic_formula(batch) -> None:
    logits, targets = batch
    criterion = MultiFocalModifierCriterion(LABELS.sum(axis=0), cooccurrence_counts(LABELS), **MFM)
    out = criterion(ModelOutput(logits=logits), targets)
    assert set(out) == {"total", "mfm"}
    assert out["total"].item() == pytest.approx(mfm_reference(logits, targets, LABELS), rel=1e-5)
    # Class 4 never co-occurs (zero column): finite, and the row with only class 4 has a = 0.
    assert criterion.cooccurrence[:, 4].abs().sum() == 0


def test_mfm_finite_and_gradients() -> None:
    criterion = MultiFocalModifierCriterion(LABELS.sum(axis=0), cooccurrence_counts(LABELS), **MFM)
    logits = torch.tensor(
        [[40.0, -40.0, 0.0, 100.0, -100.0], [0.5, -0.5, 3.0, -3.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0]],
        requires_grad=True,
    )
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0], [0.0] * 5, [1.0] * 5])
    out = criterion(ModelOutput(logits=logits), targets)
    assert torch.isfinite(out["total"])
    out["total"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"cooccurrence must be \(5, 5\)"):
        MultiFocalModifierCriterion(LABELS.sum(axis=0), np.zeros((4, 4)), **MFM)
