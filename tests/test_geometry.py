"""safe_normalize: F.normalize's values, with a finite (zero) gradient at zero length."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mlcnc.geometry import safe_normalize
from mlcnc.losses import collapse_calibration_loss, feature_label_alignment_loss


def test_matches_f_normalize_and_gradcheck() -> None:
    x = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(safe_normalize(x), F.normalize(x, dim=-1))
    assert torch.autograd.gradcheck(safe_normalize, (x,))


def test_zero_vectors_give_zero_and_zero_gradient_in_float16() -> None:
    x = torch.zeros(3, 5, dtype=torch.float16)
    x[1] = torch.tensor([3.0, 4.0, 0.0, 0.0, 0.0])
    x.requires_grad_(True)
    y = safe_normalize(x)
    assert torch.equal(y[0], torch.zeros(5, dtype=torch.float16))
    torch.testing.assert_close(
        y[1].float(), torch.tensor([0.6, 0.8, 0.0, 0.0, 0.0]), atol=1e-3, rtol=0
    )
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(
        x.grad[0], torch.zeros(5, dtype=torch.float16)
    )
    # F.normalize's gradient at zero is g / eps: it overflows float16.
    z = torch.zeros(1, 5, dtype=torch.float16, requires_grad=True)
    F.normalize(z, dim=-1, eps=1e-12).sum().backward()
    assert not torch.isfinite(z.grad).all()


def test_losses_stay_finite_for_a_zero_class_feature_in_float16() -> None:
    """A ReLU network can give an all-zero class feature; its gradient must not be inf."""
    features = torch.randn(4, 3, 8).half()
    features[0, 1] = 0.0
    features.requires_grad_(True)
    labels = torch.randn(3, 8)
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    loss = feature_label_alignment_loss(features, labels, targets)
    projections = torch.zeros(4, 3, 5, dtype=torch.float16, requires_grad=True)
    loss = loss + collapse_calibration_loss(projections, torch.randn(3, 5), targets)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(features.grad).all() and torch.isfinite(projections.grad).all()
    assert torch.equal(features.grad[0, 1], torch.zeros(8, dtype=torch.float16))
