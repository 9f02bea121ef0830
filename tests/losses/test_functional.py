"""Each MLC-NC loss against a plain loop written from the spec's formula (spec A1, B2)."""

from __future__ import annotations

import math

import pytest
import torch

from mlcnc.losses import collapse_calibration_loss, feature_label_alignment_loss, two_way_loss

C = 5


def edge_case_targets() -> torch.Tensor:
    """Rows: no positive; every label; one label; two labels; one label.
    Columns: class 4 has no positive; class 0 is positive in two rows."""
    return torch.tensor(
        [
            [0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1],
            [1, 0, 0, 0, 0],
            [0, 1, 1, 0, 0],
            [0, 0, 0, 1, 0],
        ],
        dtype=torch.float32,
    )


def single_class_targets() -> torch.Tensor:
    targets = torch.zeros(4, C)
    targets[:, 2] = 1.0
    return targets


TARGET_CASES = [edge_case_targets(), single_class_targets(), torch.zeros(3, C), torch.ones(3, C)]


# ---- references: loops over samples and classes, from the formulas ----------------------


def ref_two_way(logits: torch.Tensor, targets: torch.Tensor, tp: float, tn: float) -> float:
    def term(z: list[float], y: list[float]) -> float:
        neg = [v for v, t in zip(z, y, strict=True) if t == 0]
        pos = [v for v, t in zip(z, y, strict=True) if t > 0]
        neg_lse = tn * math.log(sum(math.exp(v / tn) for v in neg)) if neg else -math.inf
        pos_lse = tp * math.log(sum(math.exp(-v / tp) for v in pos))
        return math.log1p(math.exp(neg_lse + pos_lse))

    z, y = logits.tolist(), targets.tolist()
    rows = [term(z[i], y[i]) for i in range(len(z)) if any(y[i])]
    cols = []
    for c in range(len(z[0])):
        zc, yc = [r[c] for r in z], [r[c] for r in y]
        if any(yc):
            cols.append(term(zc, yc))
    return (sum(rows) / len(rows) if rows else 0.0) + (sum(cols) / len(cols) if cols else 0.0)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def ref_fla(features: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> float:
    num_samples, num_classes, _ = features.shape
    total = 0.0
    for i in range(num_samples):
        for c in range(num_classes):
            s = cosine(features[i, c].tolist(), labels[c].tolist())
            y = targets[i, c].item()
            total += y * math.log((1 + s) / 2 + 1e-6)
            total += (1 - y) * math.log(
                1 - (num_classes - 1) / num_classes * abs(1 / (num_classes - 1) + s) + 1e-6
            )
    return -total / (num_samples * num_classes)


def ref_fpc(mu, protos, targets, tau1, tau2, per_sample, valid=None) -> float:
    num_samples, num_classes, _ = mu.shape
    valid = [True] * num_classes if valid is None else valid.tolist()
    terms = []
    for i in range(num_samples):
        for c in range(num_classes):
            if targets[i, c] > 0 and valid[c]:
                numerator = math.exp(cosine(mu[i, c].tolist(), protos[c].tolist()) / tau1)
                denominator = sum(
                    math.exp(cosine(mu[i, c].tolist(), protos[k].tolist()) / tau2)
                    for k in range(num_classes)
                    if valid[k]
                )
                terms.append(-math.log(numerator / denominator))
    if per_sample:
        return sum(terms) / num_samples
    return sum(terms) / len(terms) if terms else 0.0


# ---- two-way ----------------------------------------------------------------------------


@pytest.mark.parametrize("targets", TARGET_CASES)
@pytest.mark.parametrize(("tp", "tn"), [(4.0, 1.0), (2.0, 0.5)])
def test_two_way_matches_reference(targets: torch.Tensor, tp: float, tn: float) -> None:
    logits = torch.randn(targets.shape, generator=torch.Generator().manual_seed(0)) * 3
    logits.requires_grad_(True)
    loss = two_way_loss(logits, targets, tp=tp, tn=tn)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(
        ref_two_way(logits.detach().double(), targets, tp, tn), rel=1e-5, abs=1e-6
    )
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_two_way_known_value() -> None:
    # One sample, one positive (z=0) and one negative (z=0): softplus(0 + 0) twice... per sample
    # softplus(log e^0 + 4 log e^0) = log 2; class 0 has a positive and no negative -> 0.
    loss = two_way_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), tp=4.0, tn=1.0)
    assert loss.item() == pytest.approx(math.log(2))


def test_two_way_is_finite_for_large_logits() -> None:
    logits = torch.tensor([[80.0, -90.0, 100.0], [-100.0, 95.0, 0.0]], requires_grad=True)
    loss = two_way_loss(logits, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), tp=4.0, tn=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_two_way_rejects_mismatched_targets() -> None:
    with pytest.raises(ValueError, match="two_way_loss"):
        two_way_loss(torch.zeros(2, 3), torch.zeros(2, 4), tp=4.0, tn=1.0)


# ---- feature-label alignment ---------------------------------------------------------------


@pytest.mark.parametrize("targets", TARGET_CASES)
def test_fla_matches_reference(targets: torch.Tensor) -> None:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(targets.shape[0], C, 8, generator=generator, requires_grad=True)
    labels = torch.randn(C, 8, generator=generator)
    loss = feature_label_alignment_loss(features, labels, targets)
    assert loss.item() == pytest.approx(
        ref_fla(features.detach().double(), labels.double(), targets), rel=1e-5
    )
    loss.backward()
    assert torch.isfinite(features.grad).all()


def test_fla_minimum_at_the_targets_angles() -> None:
    # C = 3: the positive equals its label (cos 1), the negatives sit at cos -1/(C-1) = -1/2.
    labels = torch.eye(3)
    features = torch.stack(
        [
            labels[0],
            -0.5 * labels[1] + 0.75**0.5 * labels[0],
            -0.5 * labels[2] + 0.75**0.5 * labels[0],
        ]
    )
    loss = feature_label_alignment_loss(features[None], labels, torch.tensor([[1.0, 0.0, 0.0]]))
    assert loss.item() == pytest.approx(-math.log(1 + 1e-6), abs=1e-6)
    # Swapping the roles (all negative) costs more.
    assert feature_label_alignment_loss(features[None], labels, torch.zeros(1, 3)) > loss


def test_fla_zero_feature_is_finite() -> None:
    features = torch.zeros(2, 3, 4, requires_grad=True)
    loss = feature_label_alignment_loss(
        features, torch.randn(3, 4), torch.tensor([[1.0, 0, 0], [0, 0, 0]])
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all()


# ---- collapse calibration -----------------------------------------------------------------


@pytest.mark.parametrize("targets", TARGET_CASES)
@pytest.mark.parametrize(("tau1", "tau2"), [(0.5, None), (0.5, 0.2)])
@pytest.mark.parametrize("reduction", ["positive_mean", "per_sample"])
def test_fpc_matches_reference(targets, tau1, tau2, reduction) -> None:
    generator = torch.Generator().manual_seed(2)
    mu = torch.randn(targets.shape[0], C, 4, generator=generator, requires_grad=True)
    protos = torch.randn(C, 4, generator=generator)
    loss = collapse_calibration_loss(mu, protos, targets, tau1=tau1, tau2=tau2, reduction=reduction)
    expected = ref_fpc(
        mu.detach().double(),
        protos.double(),
        targets,
        tau1,
        tau2 or tau1,
        reduction == "per_sample",
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    loss.backward()
    assert torch.isfinite(mu.grad).all()


def test_fpc_none_reduction_and_known_value() -> None:
    # Orthonormal prototypes, projections equal to their own class: S_cc = 1, S_ck = 0.
    protos = torch.eye(3)
    mu = protos[None].repeat(2, 1, 1)
    targets = torch.tensor([[1.0, 0, 1], [0, 0, 0]])
    per_pair = collapse_calibration_loss(mu, protos, targets, tau1=0.5, reduction="none")
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert per_pair.shape == (2, 3)
    torch.testing.assert_close(per_pair, targets * expected)


def test_fpc_invalid_prototypes_are_dropped_without_nan() -> None:
    targets = edge_case_targets()
    generator = torch.Generator().manual_seed(3)
    mu = torch.randn(5, C, 4, generator=generator, requires_grad=True)
    protos = torch.randn(C, 4, generator=generator)
    protos[1] = float("nan")  # never seen: whatever is stored must not leak
    protos[3] = 0.0
    valid = torch.tensor([True, False, True, False, True])
    loss = collapse_calibration_loss(mu, torch.nan_to_num(protos), targets, valid=valid)
    expected = ref_fpc(
        mu.detach().double(), torch.nan_to_num(protos).double(), targets, 0.5, 0.5, False, valid
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(mu.grad).all()


def test_fpc_all_invalid_is_zero_and_zero_prototypes_give_log_c() -> None:
    mu = torch.randn(4, C, 3, requires_grad=True)
    targets = edge_case_targets()[:4]
    none_valid = collapse_calibration_loss(
        mu, torch.zeros(C, 3), targets, valid=torch.zeros(C, dtype=torch.bool)
    )
    none_valid.backward()
    assert none_valid.item() == 0.0
    assert torch.equal(mu.grad, torch.zeros_like(mu))
    # The authors' epoch 0: zero prototypes, no mask -> every S = 0 -> log C.
    assert collapse_calibration_loss(mu, torch.zeros(C, 3), targets).item() == pytest.approx(
        math.log(C)
    )


def test_fpc_bad_reduction() -> None:
    with pytest.raises(ValueError, match="reduction"):
        collapse_calibration_loss(
            torch.randn(2, C, 3), torch.randn(C, 3), torch.ones(2, C), reduction="sum"
        )


# ---- gradcheck and AMP ----------------------------------------------------------------------


def test_gradcheck_each_loss() -> None:
    generator = torch.Generator().manual_seed(4)
    targets = edge_case_targets().double()
    logits = torch.randn(5, C, generator=generator, dtype=torch.float64, requires_grad=True)
    features = torch.randn(5, C, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randn(C, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(5, C, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    protos = torch.randn(C, 3, generator=generator, dtype=torch.float64)
    valid = torch.tensor([True, True, False, True, True])

    # Double inputs stay double inside the losses, so the default tolerances apply.
    assert two_way_loss(logits, targets, tp=4.0, tn=1.0).dtype == torch.float64
    torch.autograd.gradcheck(lambda z: two_way_loss(z, targets, tp=4.0, tn=1.0), (logits,))
    torch.autograd.gradcheck(lambda z: two_way_loss(z, targets, tp=2.0, tn=0.5), (logits,))
    torch.autograd.gradcheck(
        lambda f, e: feature_label_alignment_loss(f, e, targets), (features, labels)
    )
    for reduction in ("positive_mean", "per_sample"):
        torch.autograd.gradcheck(
            lambda m, r=reduction: collapse_calibration_loss(
                m, protos, targets, tau2=0.3, reduction=r, valid=valid
            ),
            (mu,),
        )


def test_losses_return_float32_under_autocast() -> None:
    targets = edge_case_targets()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = torch.randn(5, C).bfloat16()
        features = torch.randn(5, C, 8).bfloat16()
        mu = torch.randn(5, C, 4).bfloat16()
        values = [
            two_way_loss(logits, targets, tp=4.0, tn=1.0),
            feature_label_alignment_loss(features, torch.randn(C, 8), targets),
            collapse_calibration_loss(mu, torch.randn(C, 4), targets),
        ]
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in values)
