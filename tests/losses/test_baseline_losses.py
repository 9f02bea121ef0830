"""The baseline losses against plain loop references written from the published formulas."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from mlcnc.losses.asymmetric import AsymmetricCriterion, asymmetric_loss
from mlcnc.losses.bce import (
    BCECriterion,
    ReweightedBCECriterion,
    bce_loss,
    inverse_frequency_weights,
)
from mlcnc.losses.class_balanced_focal import ClassBalancedFocalCriterion
from mlcnc.losses.distribution_balanced import (
    DB_PRESETS,
    DBParams,
    DistributionBalancedCriterion,
    distribution_balanced_loss,
)
from mlcnc.losses.focal import FocalCriterion, focal_loss
from mlcnc.losses.functional import two_way_loss
from mlcnc.losses.ldam import LDAMCriterion, ldam_loss, ldam_margins
from mlcnc.losses.reduction import as_class_freq
from mlcnc.losses.two_way import TwoWayCriterion
from mlcnc.models.output import ModelOutput

CLASS_FREQ = [50.0, 20.0, 7.0, 3.0, 1.0]
NUM_SAMPLES = 60
ASL_DEFAULTS = {
    "gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05, "eps": 1e-8,
    "detach_focal_weight": True, "reduction": "sum",
}  # fmt: skip
ASL = {"eps": 1e-8, "detach_focal_weight": True, "reduction": "sum"}
DB_FOCAL = {"gamma": 2.0, "balance_param": 2.0}


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(z: float, y: float) -> float:
    """-[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))] for y in {0, 1}, as log(1 + e^-+z)."""
    return math.log1p(math.exp(-z)) if y == 1 else math.log1p(math.exp(z))


def entries(logits: torch.Tensor, targets: torch.Tensor):
    for b in range(logits.shape[0]):
        for c in range(logits.shape[1]):
            yield b, c, float(logits[b, c]), float(targets[b, c])


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2
    targets = (torch.rand(6, 5, generator=g) < 0.4).double()
    targets[0] = 0.0  # a row without positives
    targets[1, 0] = 1.0
    return logits, targets


# --------------------------------------------------------------------------- class weights
def test_inverse_frequency_weights_match_formula() -> None:
    for power in (1.0, 0.5):
        raw = [n**-power for n in CLASS_FREQ]
        expected = [w / (sum(raw) / len(raw)) for w in raw]
        got = inverse_frequency_weights(np.array(CLASS_FREQ), power)
        assert torch.allclose(got, torch.tensor(expected), rtol=1e-6)
        assert got.mean().item() == pytest.approx(1.0, rel=1e-6)


def test_ldam_margins_match_formula() -> None:
    got = ldam_margins(CLASS_FREQ, max_margin=0.5)
    largest = max(n**-0.25 for n in CLASS_FREQ)
    expected = [0.5 * n**-0.25 / largest for n in CLASS_FREQ]
    assert torch.allclose(got, torch.tensor(expected), rtol=1e-6)
    assert got[-1].item() == pytest.approx(0.5)  # the rarest class gets the largest margin


@pytest.mark.parametrize(
    "make",
    [
        lambda f: inverse_frequency_weights(f, 1.0),
        lambda f: ldam_margins(f, 0.5),
        lambda f: ReweightedBCECriterion(f, mode="inv"),
        lambda f: DistributionBalancedCriterion(
            f, num_samples=100, params=DB_PRESETS["voc"], focal=True, gamma=2.0, balance_param=2.0
        ),
    ],
)
def test_zero_frequency_class_is_refused_by_name(make) -> None:
    with pytest.raises(ValueError, match=r"classes \[2\] have no training positive"):
        make([5.0, 3.0, 0.0, 1.0])


def test_class_in_every_image_is_refused_for_db() -> None:
    with pytest.raises(ValueError, match=r"classes \[0\] are positive in all 10"):
        as_class_freq([10.0, 3.0], "x", num_samples=10)


# --------------------------------------------------------------------------- losses
def test_bce_and_reweighted_bce_match_loop(batch) -> None:
    logits, targets = batch
    weight = inverse_frequency_weights(CLASS_FREQ, 0.5)
    plain = [bce(z, y) for _, _, z, y in entries(logits, targets)]
    weighted = [float(weight[c]) * bce(z, y) for _, c, z, y in entries(logits, targets)]
    assert bce_loss(logits, targets).item() == pytest.approx(np.mean(plain), rel=1e-5)
    assert bce_loss(logits, targets, weight, reduction="sum").item() == pytest.approx(
        np.sum(weighted), rel=1e-5
    )
    criterion = ReweightedBCECriterion(CLASS_FREQ, mode="sqrt_inv")
    out = criterion(ModelOutput(logits=logits), targets)
    assert out["total"].item() == pytest.approx(np.mean(weighted), rel=1e-5)
    assert set(out) == {"total", "bce"}


def test_focal_and_cb_focal_match_loop(batch) -> None:
    logits, targets = batch

    def focal(z: float, y: float, gamma: float, alpha: float | None) -> float:
        p = sigmoid(z)
        p_t = p if y == 1 else 1 - p
        a_t = 1.0 if alpha is None else (alpha if y == 1 else 1 - alpha)
        return -a_t * (1 - p_t) ** gamma * math.log(p_t)

    for alpha in (None, 0.25):
        expected = np.mean([focal(z, y, 2.0, alpha) for *_, z, y in entries(logits, targets)])
        assert focal_loss(logits, targets, gamma=2.0, alpha=alpha).item() == pytest.approx(
            expected, rel=1e-5
        )
    raw = torch.tensor([(1 - 0.999) / (1 - 0.999**n) for n in CLASS_FREQ])
    weight = raw * len(CLASS_FREQ) / raw.sum()  # class-balanced weights (Cui et al.)
    expected = np.mean(
        [float(weight[c]) * focal(z, y, 2.0, None) for _, c, z, y in entries(logits, targets)]
    )
    got = focal_loss(logits, targets, gamma=2.0, alpha=None, class_weight=weight)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # DB's CB-Focal (per-sample weights) is tested in test_baselines_reference.py.
    with pytest.raises(ValueError, match="alpha"):
        focal_loss(logits, targets, gamma=2.0, alpha=1.5)


def test_ldam_matches_loop(batch) -> None:
    logits, targets = batch
    margins = ldam_margins(CLASS_FREQ, 0.5)
    expected = np.mean(
        [bce(10.0 * (z - y * float(margins[c])), y) for _, c, z, y in entries(logits, targets)]
    )
    got = ldam_loss(logits, targets, margins, scale=10.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # The margin makes a positive harder: the loss exceeds plain scaled BCE.
    assert got.item() > ldam_loss(logits, targets, torch.zeros(5), scale=10.0).item()


def test_asymmetric_loss_matches_published_formula(batch) -> None:
    logits, targets = batch

    def asl(z: float, y: float, gamma_neg: float, gamma_pos: float, clip: float) -> float:
        p = sigmoid(z)
        if y == 1:
            return -((1 - p) ** gamma_pos) * math.log(p)
        p_m = max(p - clip, 0.0)
        return -(p_m**gamma_neg) * math.log(1 - p_m)

    for gamma_neg, gamma_pos, clip in [(4.0, 0.0, 0.05), (2.0, 1.0, 0.0), (4.0, 1.0, 0.2)]:
        expected = [asl(z, y, gamma_neg, gamma_pos, clip) for *_, z, y in entries(logits, targets)]
        got = asymmetric_loss(
            logits, targets, **ASL, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip
        )
        assert got.item() == pytest.approx(np.sum(expected), rel=1e-5)
    # A negative whose probability is below the clip costs nothing.
    low = torch.tensor([[-5.0]])
    assert asymmetric_loss(low, torch.zeros(1, 1), **ASL_DEFAULTS).item() == 0.0


def db_reference(
    logits: torch.Tensor, targets: torch.Tensor, params: DBParams, focal: bool
) -> float:
    """Spec 7.4 written out entry by entry."""
    n = CLASS_FREQ
    total = 0.0
    for b, c, z, y in entries(logits, targets):
        repeat = sum(float(targets[b, j]) / n[j] for j in range(len(n)))
        r = math.inf if repeat == 0 else (1 / n[c]) / repeat
        w = (
            params.map_alpha + sigmoid(params.map_beta * (r - params.map_mu))
            if r != math.inf
            else params.map_alpha + 1
        )
        bias = params.init_bias / params.neg_scale * math.log(n[c] / (NUM_SAMPLES - n[c]))
        zt = z + bias
        if y == 1:
            z_mod, w_mod = zt, w
        else:
            z_mod, w_mod = params.neg_scale * zt, w / params.neg_scale
        entry = bce(z_mod, y)
        loss = w_mod * entry
        if focal:
            p_t = math.exp(-entry)
            loss = 2.0 * (1 - p_t) ** 2 * loss
        total += loss
    return total / logits.numel()


@pytest.mark.parametrize("preset", ["voc", "coco"])
@pytest.mark.parametrize("focal", [False, True])
def test_distribution_balanced_loss_matches_spec(batch, preset: str, focal: bool) -> None:
    logits, targets = batch
    params = DB_PRESETS[preset]
    expected = db_reference(logits, targets, params, focal)
    freq = torch.tensor(CLASS_FREQ)
    got = distribution_balanced_loss(
        logits, targets, freq, NUM_SAMPLES, params, focal=focal, **DB_FOCAL
    )
    assert got.item() == pytest.approx(expected, rel=1e-5)
    criterion = DistributionBalancedCriterion(
        CLASS_FREQ, NUM_SAMPLES, params, focal=focal, **DB_FOCAL
    )
    out = criterion(ModelOutput(logits=logits), targets)
    assert out["total"].item() == pytest.approx(expected, rel=1e-5)
    assert set(out) == {"total", "db_focal" if focal else "db"}


def test_db_presets_are_the_spec_values() -> None:
    assert DB_PRESETS["voc"] == DBParams(0.1, 10.0, 0.3, 5.0, 0.05)
    assert DB_PRESETS["coco"] == DBParams(0.1, 10.0, 0.2, 2.0, 0.05)


def test_two_way_criterion_is_the_core_loss(batch) -> None:
    logits, targets = batch
    out = TwoWayCriterion(tp=4.0, tn=1.0)(ModelOutput(logits=logits), targets)
    assert out["total"].item() == pytest.approx(
        two_way_loss(logits, targets, tp=4.0, tn=1.0).item()
    )


# --------------------------------------------------------------------------- every criterion
def all_criteria() -> dict[str, torch.nn.Module]:
    return {
        "bce": BCECriterion(),
        "rw": ReweightedBCECriterion(CLASS_FREQ, mode="inv"),
        "focal": FocalCriterion(gamma=2.0, alpha=None),
        "cb_focal": ClassBalancedFocalCriterion(
            CLASS_FREQ, beta=0.9, gamma=2.0, mode="average_w", balance_param=2.0
        ),
        "ldam": LDAMCriterion(CLASS_FREQ, max_margin=0.5, scale=30.0),
        "asl": AsymmetricCriterion(**ASL_DEFAULTS),
        "db": DistributionBalancedCriterion(
            CLASS_FREQ, NUM_SAMPLES, DB_PRESETS["voc"], focal=False
        ),
        "db_focal": DistributionBalancedCriterion(
            CLASS_FREQ, NUM_SAMPLES, DB_PRESETS["voc"], focal=True, **DB_FOCAL
        ),
        "two_way": TwoWayCriterion(tp=4.0, tn=1.0),
    }


@pytest.mark.parametrize("name", list(all_criteria()))
def test_criteria_finite_with_extreme_logits_and_empty_rows(name: str) -> None:
    criterion = all_criteria()[name]
    logits = torch.tensor(
        [[40.0, -40.0, 0.0, 100.0, -100.0], [0.5, -0.5, 3.0, -3.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0]],
        requires_grad=True,
    )
    targets = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0], [1.0] * 5])
    out = criterion(ModelOutput(logits=logits), targets)
    assert out["total"].dtype == torch.float32
    assert out["total"].dim() == 0
    assert torch.isfinite(out["total"])
    out["total"].backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(all_criteria()))
def test_criteria_are_float32_under_autocast(name: str) -> None:
    criterion = all_criteria()[name]
    logits = torch.randn(4, 5).bfloat16()
    targets = (torch.rand(4, 5) < 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = criterion(ModelOutput(logits=logits), targets)
    assert out["total"].dtype == torch.float32


def test_criteria_state_dict_carries_class_statistics() -> None:
    criteria = all_criteria()
    assert torch.equal(
        criteria["rw"].state_dict()["class_weight"], inverse_frequency_weights(CLASS_FREQ, 1.0)
    )
    assert torch.equal(criteria["cb_focal"].state_dict()["class_freq"], torch.tensor(CLASS_FREQ))
    assert torch.equal(criteria["ldam"].state_dict()["margins"], ldam_margins(CLASS_FREQ, 0.5))
    assert torch.equal(criteria["db"].state_dict()["class_freq"], torch.tensor(CLASS_FREQ))
    assert criteria["bce"].state_dict() == {}
    assert criteria["focal"].state_dict() == {}


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"bce_loss: targets have shape \(2, 3\)"):
        bce_loss(torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="class_weight must have shape"):
        bce_loss(torch.zeros(2, 4), torch.zeros(2, 4), class_weight=torch.ones(3))
    with pytest.raises(ValueError, match="reduction"):
        bce_loss(torch.zeros(2, 4), torch.zeros(2, 4), reduction="avg")
    with pytest.raises(ValueError, match="mode"):
        ReweightedBCECriterion(CLASS_FREQ, mode="log")


def test_reduction_none_keeps_entries(batch) -> None:
    logits, targets = batch
    focal = functools.partial(focal_loss, gamma=2.0, alpha=None)
    for fn in (bce_loss, focal):
        per_entry = fn(logits, targets, reduction="none")
        assert per_entry.shape == logits.shape
        assert per_entry.mean().item() == pytest.approx(fn(logits, targets).item(), rel=1e-6)
    # ASL sums by default (its authors' reduction).
    per_entry = asymmetric_loss(logits, targets, **{**ASL_DEFAULTS, "reduction": "none"})
    assert per_entry.shape == logits.shape
    assert per_entry.sum().item() == pytest.approx(
        asymmetric_loss(logits, targets, **ASL_DEFAULTS).item(), rel=1e-6
    )
