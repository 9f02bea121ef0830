"""URS: the two-subnet forward with cross-branch outputs, logit compensation (Eq. 2), the
total loss (Eq. 1) and the averaged prediction."""

from __future__ import annotations

import math

import pytest
import torch

from mlcnc.losses.urs import URSCriterion, compensated_bce, logit_consistency
from mlcnc.models.branches import TwoBranchOutput, mean_probability_logit
from mlcnc.models.output import ModelOutput
from mlcnc.models.urs import URSModel


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture(scope="module")
def model() -> URSModel:
    torch.manual_seed(0)
    return URSModel(num_classes=3, backbone="resnet18", pretrained=False)


def test_cross_branch_outputs(model: URSModel) -> None:
    model.eval()
    pair = torch.randn(2, 2, 3, 16, 16)
    with torch.no_grad():
        out = model(pair)
        h_u, h_r = model.shared(pair[:, 0]), model.shared(pair[:, 1])
        u = model.uniform_fc(model.uniform_stage(h_u).mean(dim=(2, 3)))
        u_cross = model.rebalanced_fc(model.rebalanced_stage(h_u).mean(dim=(2, 3)))
        r = model.rebalanced_fc(model.rebalanced_stage(h_r).mean(dim=(2, 3)))
        r_cross = model.uniform_fc(model.uniform_stage(h_r).mean(dim=(2, 3)))
    for got, want in [
        (out.uniform_logits, u),
        (out.uniform_cross, u_cross),
        (out.rebalanced_logits, r),
        (out.rebalanced_cross, r_cross),
    ]:
        assert got.shape == (2, 3) and torch.allclose(got, want, atol=1e-5)
    # Test time: the mean probability of the two subnets on the image.
    with torch.no_grad():
        single = model(pair[:, 0])
    expected = (torch.sigmoid(u) + torch.sigmoid(u_cross)) / 2
    assert torch.allclose(torch.sigmoid(single.logits), expected, atol=1e-5)
    assert single.uniform_cross is None and single.compensation_u is None
    assert model.uniform_stage[0].conv1.weight.data_ptr() != (
        model.rebalanced_stage[0].conv1.weight.data_ptr()
    )


def test_mean_probability_logit_is_stable() -> None:
    a = torch.tensor([-200.0, 0.0, 3.0, 200.0])
    b = torch.tensor([-200.0, 1.0, -3.0, -200.0])
    got = mean_probability_logit(a, b)
    assert torch.isfinite(got).all()
    assert torch.allclose(torch.sigmoid(got), (torch.sigmoid(a) + torch.sigmoid(b)) / 2)


def test_compensated_bce_by_hand() -> None:
    z = torch.tensor([[0.5, -1.0]])
    y = torch.tensor([[1.0, 0.0]])
    comp = torch.tensor([[2.0, 0.5], [0.1, -0.2], [1.5, 0.3], [-0.4, 0.6]])  # sp, mp, sn, mn
    w = torch.tensor([1.0, 3.0])
    # Class 0 positive: -log s(0.5 * 2 + 0.1); class 1 negative: -log(1 - s(-1 * 0.3 + 0.6)).
    expected = (-math.log(sigmoid(0.5 * 2.0 + 0.1)) - 3.0 * math.log(1 - sigmoid(-0.3 + 0.6))) / 2
    assert compensated_bce(z, y, comp, w).item() == pytest.approx(expected, rel=1e-6)
    # The identity compensation is plain BCE.
    identity = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    plain = (-math.log(sigmoid(0.5)) - math.log(1 - sigmoid(-1.0))) / 2
    assert compensated_bce(z, y, identity).item() == pytest.approx(plain, rel=1e-6)


def test_total_loss_is_eq1() -> None:
    g = torch.Generator().manual_seed(0)
    u, uc, r, rc = (torch.randn(2, 3, generator=g) for _ in range(4))
    comp = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(4, 1).expand(4, 3)
    out = TwoBranchOutput(
        logits=u,
        uniform_logits=u,
        uniform_cross=uc,
        rebalanced_logits=r,
        rebalanced_cross=rc,
        compensation_u=comp,
        compensation_r=comp * 2,
    )
    targets = torch.tensor([[[1.0, 0, 0], [0, 1, 1]], [[0.0, 0, 1], [1, 0, 0]]])
    losses = URSCriterion(consistency_weight=0.5, consistency="mse_prob")(out, targets)
    cls_u = compensated_bce(u, targets[:, 0], comp)
    cls_r = compensated_bce(r, targets[:, 1], comp * 2)
    con = ((torch.sigmoid(u) - torch.sigmoid(uc)) ** 2).mean() + (
        (torch.sigmoid(r) - torch.sigmoid(rc)) ** 2
    ).mean()
    assert losses["total"].item() == pytest.approx((cls_u + cls_r + 0.5 * con).item(), rel=1e-6)
    assert logit_consistency(u, uc, "mse_logit").item() == pytest.approx(
        ((u - uc) ** 2).mean().item()
    )
    with pytest.raises(ValueError, match="paired training output"):
        URSCriterion(consistency_weight=0.1, consistency="mse_prob")(ModelOutput(logits=u), targets)
    with pytest.raises(ValueError, match="consistency must be one of"):
        URSCriterion(consistency_weight=0.1, consistency="kl")


def test_training_step_reaches_every_parameter(model: URSModel) -> None:
    model.train()
    model.zero_grad()
    pair = torch.randn(4, 2, 3, 16, 16)
    targets = (torch.rand(4, 2, 3) < 0.5).float()
    losses = URSCriterion(consistency_weight=0.1, consistency="mse_prob")(model(pair), targets)
    assert torch.isfinite(losses["total"])
    losses["total"].backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.compensation_u.grad.abs().sum() > 0
    assert model.compensation_r.grad.abs().sum() > 0
    fixed = URSModel(num_classes=3, backbone="resnet18", pretrained=False, compensation=False)
    assert "compensation_u" not in dict(fixed.named_parameters())
