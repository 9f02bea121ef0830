"""LM-CLIP's losses against plain re-writings of the authors' code (damilab/lm-clip @
9983999: ``asl_loss.py`` ``BalancedAsymmetricLossOptimized``, OpenCLIP's ``ClipLoss`` with
world_size 1, ``dataset_loaders/voc_mlt.py`` weights; vlm-spec 2.2, 2.3): values and
gradients, the four published settings in three logit regimes, finite under bf16 autocast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlcnc.losses.balanced_asl import (
    balanced_asymmetric_loss,
    lmclip_class_weights,
    lmclip_sample_weights,
)
from mlcnc.losses.clip_contrastive import clip_contrastive_loss
from mlcnc.methods.lmclip import LMCLIP_PRESETS


def authors_bal(x, y, cw, gamma_neg, gamma_pos, clip, eps, ls, nan_weight=None):
    """``BalancedAsymmetricLossOptimized.forward`` (return_mean=True, focal weight with
    gradient), its in-place steps written out; ``nan_weight`` replaces the weights its
    ``torch.pow`` makes NaN (None: kept, as released)."""
    num_classes = x.size(-1)
    targets = y * (1 - ls) + ls / num_classes
    anti_targets = 1 - y
    x = x / torch.max(x)
    xs_pos = torch.sigmoid(x)
    xs_neg = 1.0 - xs_pos
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    loss = targets * torch.log(xs_pos.clamp(min=eps)) * (1 + cw)
    loss = loss + anti_targets * torch.log(xs_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        xs_pos = xs_pos * targets
        xs_neg = xs_neg * anti_targets
        asymmetric_w = torch.pow(
            1 - xs_pos - xs_neg, gamma_pos * targets + gamma_neg * anti_targets
        )
        if nan_weight is not None:
            asymmetric_w = torch.nan_to_num(asymmetric_w, nan=nan_weight)
        loss = loss * asymmetric_w
    return -loss.mean()


def authors_clip_loss(image, text, logit_scale):
    """OpenCLIP ``ClipLoss`` (world_size 1)."""
    logits_per_image = logit_scale * image @ text.T
    logits_per_text = logit_scale * text @ image.T
    labels = torch.arange(image.shape[0])
    return (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
    ) / 2


CLASS_FREQ = np.array([40, 20, 9, 4, 2])
REGIMES = {
    "mixed": lambda g: 3 * torch.randn(6, 5, generator=g, dtype=torch.float64),
    "all_negative": lambda g: -1 - torch.rand(6, 5, generator=g, dtype=torch.float64) * 5,
    "clip_scale": lambda g: 10 + 25 * torch.rand(6, 5, generator=g, dtype=torch.float64),
}


def _targets():
    y = torch.zeros(6, 5, dtype=torch.float64)
    y[[0, 0, 1, 2, 3, 4, 5, 5], [0, 3, 1, 0, 2, 4, 1, 2]] = 1
    return y


@pytest.mark.parametrize("preset", sorted(LMCLIP_PRESETS))
@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_balanced_asl_matches_authors(preset, regime):
    p = LMCLIP_PRESETS[preset]
    g = torch.Generator().manual_seed(len(preset) + len(regime))
    x = REGIMES[regime](g)
    y = _targets()
    cw = torch.tensor(lmclip_class_weights(CLASS_FREQ, p["class_weight_power"]))
    args = dict(gamma_neg=p["gamma_neg"], gamma_pos=0.0, clip=0.05, eps=1e-8)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = balanced_asymmetric_loss(x1, y, cw, label_smoothing=p["label_smoothing"], **args)
    ref = authors_bal(x2, y, cw, p["gamma_neg"], 0.0, 0.05, 1e-8, p["label_smoothing"])
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-9, atol=1e-12)


def test_balanced_asl_reverses_order_on_all_negative_batch():
    y = torch.tensor([[1.0, 0.0]])
    cw = torch.zeros(2)
    low = balanced_asymmetric_loss(torch.tensor([[-4.0, -1.0]]), y, cw, gamma_neg=4)
    high = balanced_asymmetric_loss(torch.tensor([[-1.0, -4.0]]), y, cw, gamma_neg=4)
    assert low < high  # the positive scored lower gets the lower loss: max(x) < 0 flips it


def test_clip_contrastive_matches_openclip():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor(np.log(100.0), dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (image, text, scale)] * 1
    refs = [t.clone().requires_grad_() for t in (image, text, scale)]
    ours = clip_contrastive_loss(*leaves)
    ref = authors_clip_loss(refs[0], refs[1], refs[2].exp())
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours, ref)
    for a, b in zip(leaves, refs, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_weights_match_authors_loaders():
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 0], [1, 1, 0]])
    n = len(labels)
    freq = labels.sum(0)
    s = 1.35
    want_cw = (n / freq) ** s / ((n / freq) ** s).max()
    np.testing.assert_allclose(lmclip_class_weights(freq, s), want_cw)
    raw = np.array([sum(n / freq[c] for c in np.flatnonzero(row)) ** s for row in labels])
    np.testing.assert_allclose(lmclip_sample_weights(labels, s), raw / raw.max())
    with pytest.raises(ValueError, match="training image"):
        lmclip_class_weights(np.array([3, 0]), 1.0)


def test_finite_under_bf16_autocast():
    g = torch.Generator().manual_seed(3)
    x = (10 + 20 * torch.rand(6, 5, generator=g)).requires_grad_()
    emb = F.normalize(torch.randn(6, 8, generator=g), dim=-1).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bal = balanced_asymmetric_loss(
            x * 1.0, _targets().float(), torch.ones(5), gamma_neg=9.8, label_smoothing=0.1
        )
        con = clip_contrastive_loss(emb, emb.flip(0), torch.tensor(4.6))
    (bal + con).backward()
    assert torch.isfinite(bal) and torch.isfinite(con)
    assert torch.isfinite(x.grad).all() and torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("preset", sorted(LMCLIP_PRESETS))
def test_balanced_asl_finite_where_released_is_nan(preset):
    """A small positive maximum sends the other logits far below -2.9 after x / max(x):
    the released focal weight is NaN there (non-integer gamma_neg; 12.0 stays finite)."""
    p = LMCLIP_PRESETS[preset]
    x = torch.tensor([[0.1, -2.0, 0.05, -1.0, 0.02]] * 6, dtype=torch.float64)
    y = _targets()
    cw = torch.tensor(lmclip_class_weights(CLASS_FREQ, p["class_weight_power"]))
    args = (p["gamma_neg"], 0.0, 0.05, 1e-8, p["label_smoothing"])
    released = authors_bal(x, y, cw, *args)
    assert torch.isfinite(released) == float(p["gamma_neg"]).is_integer()
    x1 = x.clone().requires_grad_()
    ours = balanced_asymmetric_loss(x1, y, cw, gamma_neg=p["gamma_neg"], gamma_pos=0.0,
                                    clip=0.05, eps=1e-8, label_smoothing=p["label_smoothing"])  # fmt: skip
    ours.backward()
    assert torch.isfinite(x1.grad).all()
    zeroed = authors_bal(x, y, cw, *args, nan_weight=0.0)
    torch.testing.assert_close(ours.detach(), zeroed, rtol=1e-10, atol=1e-12)
