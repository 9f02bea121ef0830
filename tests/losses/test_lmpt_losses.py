"""LMPT's losses against plain re-writings of the authors' code (richard-peng-xia/LMPT @
aab39ca: ``lmpt/csel.py`` ``SoftMarginHingeEmbeddingLoss`` with the inputs ``lmpt/train.py``
builds, ``lmpt/dbl.py`` ``ResampleLoss``, ``lmpt/asl.py`` ``AsymmetricLossOptimized``;
vlm-spec 1.2): the released CSEL's failures, the corrected CSEL's value and gradient with
respect to the contexts, LMPT's DB copy against DB's element-wise form, ASL's mean."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlcnc.losses.asymmetric import asymmetric_loss
from mlcnc.losses.distribution_balanced import DB_PRESETS, distribution_balanced_loss
from mlcnc.losses.lmpt import LMPTCriterion, csel_loss, dbl_lmpt_loss
from mlcnc.methods import MethodConfig, resolve_options
from mlcnc.models.lmpt import LMPTOutput
from mlcnc.schema import ConfigError

VOC_COUNTS = [6, 34, 8, 14, 154, 17, 249, 29, 479, 4, 240, 48, 11, 20, 775, 100, 5, 82, 7, 64]
VOC_N = 1142
M_CTX = 2


class ReleasedCSEL:
    """``SoftMarginHingeEmbeddingLoss.forward`` as released (``dim=2``), or with issue #7's
    fix (``dim=1, keepdim=True``)."""

    def __init__(self, margin, class_counts, gamma=2, fix7=False):
        self.margin, self.class_counts, self.gamma, self.fix7 = margin, class_counts, gamma, fix7

    def __call__(self, inputs, labels):
        dot_product = torch.sum(inputs * labels, dim=2)
        margin = self.margin
        if self.class_counts is not None:
            self.class_counts = self.class_counts.squeeze(dim=0).expand(
                labels.shape[0], self.class_counts.shape[-1]
            )
            margin = self.margin / torch.sqrt(torch.sqrt(self.class_counts.float()))
        hinge_loss = torch.relu(margin - dot_product)
        if self.class_counts is not None:
            inv = (1 / self.class_counts) ** self.gamma
            norm = torch.sum(inv, dim=1, keepdim=True) if self.fix7 else torch.sum(inv, dim=2)
            hinge_loss = hinge_loss * inv / norm
        return hinge_loss.mean()


def released_inputs(captions_, prompts, labels, m_ctx=M_CTX):
    """``lmpt/train.py``'s (B, C, 77 - m, W) tensors and ``1 - cosine_similarity``."""
    b, c, length = captions_.shape[0], labels.shape[1], 77 - m_ctx
    a = captions_[:, :length, :].unsqueeze(1).expand(b, c, length, captions_.shape[-1])
    p = prompts[:, m_ctx:, :].unsqueeze(0).expand(b, c, length, captions_.shape[-1])
    x = 1 - torch.cosine_similarity(a, p, dim=-1)
    y = 2 * labels.unsqueeze(2).expand(b, c, length) - 1
    return x, y


def loop_csel(captions_, prompts, labels, counts, margin=0.2, gamma=2.0, similarity=False):
    """The corrected CSEL from the spec's formula, one (b, c, t) at a time."""
    b_size, c_size = labels.shape
    total = 0.0
    inverse = [float(n) ** -gamma for n in counts]
    for b in range(b_size):
        for c in range(c_size):
            y = 2.0 * float(labels[b, c]) - 1.0
            s = 0.0
            for t in range(77 - M_CTX):
                cos = F.cosine_similarity(captions_[b, t], prompts[c, t + M_CTX], dim=0)
                s = s + (cos if similarity else 1.0 - cos) * y
            m_c = margin / float(counts[c]) ** 0.25
            total = total + torch.relu(m_c - s) * inverse[c] / sum(inverse)
    return total / (b_size * c_size)


def generic_inputs(seed=0, b=3, c=4, width=8):
    g = torch.Generator().manual_seed(seed)
    captions_ = torch.randn(b, 77, width, generator=g, dtype=torch.float64)
    ctx = torch.randn(c, 16, width, generator=g, dtype=torch.float64, requires_grad=True)
    fixed = torch.randn(c, 77, width, generator=g, dtype=torch.float64)
    labels = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float64)
    return captions_, ctx, fixed, labels[:b, :c]


def assemble(fixed, ctx):
    """CoOp's prompt: [SOS] ctx_1..16 <suffix>."""
    return torch.cat([fixed[:, :1], ctx, fixed[:, 17:]], dim=1)


def distances(captions_, prompts):
    a = F.normalize(captions_[:, : 77 - M_CTX], dim=-1)
    p = F.normalize(prompts[:, M_CTX:], dim=-1)
    return 1 - torch.einsum("btw,ctw->bct", a, p)


# --------------------------------------------------------------------------- CSEL
def test_released_csel_raises_then_gives_nan_with_softmaxed_counts():
    captions_, ctx, fixed, labels = generic_inputs()
    x, y = released_inputs(captions_.float(), assemble(fixed, ctx).float(), labels.float())
    softmaxed = torch.softmax(torch.tensor(VOC_COUNTS, dtype=torch.float32), dim=0)[:4]
    with pytest.raises(IndexError, match="Dimension out of range"):
        ReleasedCSEL(0.2, softmaxed)(x, y)
    full = torch.softmax(torch.tensor(VOC_COUNTS, dtype=torch.float32), dim=0)
    assert int((full == 0).sum()) == 19  # all but the largest count underflow
    labels20 = torch.zeros(3, 20)
    labels20[:, 14] = 1
    x20 = torch.rand(3, 20, 75)
    y20 = 2 * labels20.unsqueeze(2).expand(3, 20, 75) - 1
    assert torch.isnan(ReleasedCSEL(0.2, full, fix7=True)(x20, y20))
    # mlcnc refuses that setting in one line citing the issues.
    cfg = MethodConfig(name="lmpt", loss={"csel_counts": "softmax"})
    with pytest.raises(ConfigError, match=r"#5 and #7") as error:
        resolve_options(cfg, "voc_lt")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("similarity", [False, True])
def test_corrected_csel_value_and_context_gradient_match_the_loop(similarity):
    captions_, ctx, fixed, labels = generic_inputs()
    counts = [6, 34, 8, 154]
    score = "similarity" if similarity else "distance"
    ours = csel_loss(
        distances(captions_, assemble(fixed, ctx)), labels, torch.tensor(counts, dtype=torch.float64),
        margin=0.2, gamma=2.0, score=score,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(ours, ctx)
    ref = loop_csel(captions_, assemble(fixed, ctx), labels, counts, similarity=similarity)
    (ref_grad,) = torch.autograd.grad(ref, ctx)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-9)
    assert ref.item() > 0 and grad.abs().sum() > 0
    # ctx_0 faces caption position -2: no CSEL gradient (vlm-spec 1.2).
    assert torch.all(grad[:, 0] == 0) and grad[:, 1:].abs().sum() > 0


def test_corrected_csel_equals_the_released_module_with_raw_counts():
    captions_, ctx, fixed, labels = generic_inputs(seed=3)
    counts = torch.tensor([6.0, 34.0, 8.0, 154.0], dtype=torch.float64)
    x, y = released_inputs(captions_, assemble(fixed, ctx), labels)
    released = ReleasedCSEL(0.2, counts.clone(), fix7=True)(x, y)
    ours = csel_loss(
        distances(captions_, assemble(fixed, ctx)), labels, counts, margin=0.2, gamma=2
    )
    torch.testing.assert_close(ours.double(), released, rtol=1e-6, atol=1e-9)
    # Without counts: mean relu(delta - s).
    plain = csel_loss(distances(captions_, assemble(fixed, ctx)), labels, None, margin=0.2, gamma=2)
    torch.testing.assert_close(plain.double(), ReleasedCSEL(0.2, None)(x, y), rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- LMPT's DB copy
def released_resample_loss(cls_score, label, class_freq, neg_class_freq, neg_scale, mu):
    """``ResampleLoss(use_sigmoid=True, reweight_func='rebalance', focal=dict(focal=True,
    balance_param=2.0, gamma=2), logit_reg=dict(neg_scale, init_bias=0.05),
    map_param=dict(alpha=0.1, beta=10.0, gamma=mu), loss_weight=1.0)`` with its
    ``binary_cross_entropy`` (``reduction='mean'`` hard-coded)."""
    train_num = class_freq[0] + neg_class_freq[0]
    init_bias = -torch.log(train_num / class_freq - 1) * 0.05 / neg_scale
    freq_inv = torch.ones(class_freq.shape, dtype=cls_score.dtype) / class_freq
    repeat_rate = torch.sum(label * freq_inv, dim=1, keepdim=True)
    pos_weight = freq_inv.clone().detach().unsqueeze(0) / repeat_rate
    weight = torch.sigmoid(10.0 * (pos_weight - mu)) + 0.1
    logits = cls_score + init_bias
    logits = logits * (1 - label) * neg_scale + logits * label
    weight = weight / neg_scale * (1 - label) + weight * label
    logpt = -F.binary_cross_entropy_with_logits(logits.clone(), label, None, reduction="mean")
    pt = torch.exp(logpt)
    loss = F.binary_cross_entropy_with_logits(logits, label, weight, reduction="mean")
    return 2.0 * ((1 - pt) ** 2) * loss


@pytest.mark.parametrize(("preset", "scale"), [("voc", 1.0), ("coco", 3.0), ("voc", 20.0)])
def test_dbl_lmpt_matches_the_released_resample_loss(preset, scale):
    g = torch.Generator().manual_seed(1)
    counts = torch.tensor([40.0, 20.0, 9.0, 4.0, 2.0], dtype=torch.float64)
    n = 50
    logits = (scale * torch.randn(6, 5, generator=g, dtype=torch.float64)).requires_grad_()
    labels = (torch.rand(6, 5, generator=g) < 0.4).double()
    labels[0] = 0  # a row without positives: weight alpha + 1
    p = DB_PRESETS[preset]
    ours = dbl_lmpt_loss(logits, labels, counts, n, p, gamma=2.0, balance_param=2.0)
    ref = released_resample_loss(
        logits.float().double(), labels, counts, n - counts, p.neg_scale, p.map_mu
    )
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-7)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(
        released_resample_loss(logits, labels, counts, n - counts, p.neg_scale, p.map_mu), logits
    )
    torch.testing.assert_close(g_ours.double(), g_ref, rtol=1e-4, atol=1e-7)


def test_dbl_lmpt_differs_from_db_focal_on_generic_logits_and_not_when_saturated():
    g = torch.Generator().manual_seed(2)
    counts = torch.tensor(VOC_COUNTS, dtype=torch.float32)
    labels = (torch.rand(8, 20, generator=g) < 0.2).float()
    params = DB_PRESETS["voc"]
    options = {"gamma": 2.0, "balance_param": 2.0}
    generic = torch.randn(8, 20, generator=g)
    lmpt = dbl_lmpt_loss(generic, labels, counts, VOC_N, params, **options)
    db = distribution_balanced_loss(generic, labels, counts, VOC_N, params, focal=True, **options)
    assert abs(lmpt.item() - db.item()) > 0.01 * db.item()
    # CLIP-scale logits of the wrong sign saturate every entry: the focal factors are 1.
    saturated = (10 + 25 * torch.rand(8, 20, generator=g)) * (1 - 2 * labels)
    lmpt = dbl_lmpt_loss(saturated, labels, counts, VOC_N, params, **options)
    db = distribution_balanced_loss(saturated, labels, counts, VOC_N, params, focal=True, **options)
    torch.testing.assert_close(lmpt, db, rtol=1e-4, atol=0)


# --------------------------------------------------------------------------- ASL and criterion
def released_asl_mean(x, y, gamma_neg=4, gamma_pos=0, clip=0.05, eps=1e-8):
    """``AsymmetricLossOptimized`` (disable_torch_grad_focal_loss=True), mean reduction."""
    anti = 1 - y
    xs_pos = torch.sigmoid(x)
    xs_neg = (1.0 - xs_pos + clip).clamp(max=1)
    loss = y * torch.log(xs_pos.clamp(min=eps)) + anti * torch.log(xs_neg.clamp(min=eps))
    with torch.no_grad():
        w = torch.pow(1 - xs_pos * y - xs_neg * anti, gamma_pos * y + gamma_neg * anti)
    return -(loss * w).mean()


def criterion(cls_loss="dbl_lmpt", lam=0.5):
    return LMPTCriterion(
        np.array([40, 20, 9, 4, 2]), 50, DB_PRESETS["voc"], lam=lam, cls_loss=cls_loss,
        gamma=2.0, balance_param=2.0, csel_margin=0.2, csel_gamma=2.0, csel_counts="raw",
        csel_score="distance",
    )  # fmt: skip


def test_asl_mean_is_asymmetric_loss_mean_and_the_released_asl():
    g = torch.Generator().manual_seed(4)
    logits = (3 * torch.randn(6, 5, generator=g)).requires_grad_()
    labels = (torch.rand(6, 5, generator=g) < 0.4).float()
    terms = criterion("asl_mean", lam=1.0)(LMPTOutput(logits=logits), labels)
    want = asymmetric_loss(
        logits, labels, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8,
        detach_focal_weight=True, reduction="mean",
    )  # fmt: skip
    torch.testing.assert_close(terms["cls"], want)
    torch.testing.assert_close(
        terms["cls"], released_asl_mean(logits, labels), rtol=1e-5, atol=1e-7
    )
    (grad,) = torch.autograd.grad(terms["total"], logits)
    (ref,) = torch.autograd.grad(released_asl_mean(logits, labels), logits)
    torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-7)


def test_criterion_total_is_lam_cls_plus_one_minus_lam_cse():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 5, generator=g)
    labels = (torch.rand(3, 5, generator=g) < 0.5).float()
    x = torch.rand(3, 5, 75, generator=g) * 0.01
    for name in ("dbl_lmpt", "db_focal", "asl_mean"):
        terms = criterion(name, lam=0.3)(LMPTOutput(logits=logits, csel_distances=x), labels)
        assert terms["cse"] > 0
        torch.testing.assert_close(terms["total"], 0.3 * terms["cls"] + 0.7 * terms["cse"])
        alone = criterion(name, lam=0.3)(LMPTOutput(logits=logits), labels)
        assert alone["cse"] == 0 and torch.isclose(alone["total"], 0.3 * alone["cls"])
    with pytest.raises(ValueError, match="#5 and #7"):
        LMPTCriterion(
            np.ones(5), 50, DB_PRESETS["voc"], lam=0.5, cls_loss="dbl_lmpt", gamma=2.0,
            balance_param=2.0, csel_margin=0.2, csel_gamma=2.0, csel_counts="softmax",
            csel_score="distance",
        )  # fmt: skip


def test_db_options_follow_the_dataset_preset():
    coco, _ = resolve_options(MethodConfig(name="lmpt"), "coco_lt")[1], None
    assert (coco["neg_scale"], coco["map_mu"]) == (2.0, 0.2)
    voc = resolve_options(MethodConfig(name="lmpt"), "voc_lt")[1]
    assert dataclasses.asdict(DB_PRESETS["voc"]).items() <= voc.items()
    assert (voc["lam"], voc["cls_loss"], voc["csel_counts"]) == (0.5, "dbl_lmpt", "raw")
