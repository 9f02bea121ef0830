"""OLTR's discriminative centroid loss and criterion, and LDAM-DRW's re-weighting, against
plain loops written from the reference code (OLTR ``loss/DiscCentroidsLoss.py``; LDAM-DRW
``cifar_train.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlcnc.losses.ldam import LDAMCriterion, drw_weights, ldam_loss, ldam_margins
from mlcnc.losses.oltr import OLTRCriterion, discriminative_centroid_loss
from mlcnc.models.oltr import OLTROutput

TARGETS = torch.tensor(
    [[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.float32
)


def loop_centroid_loss(x, y, c, margin=10.0, repel_weight=0.01):
    """The code's loss with (image, positive class) pairs for (image, label): value, feature
    gradient and centroid gradient (its custom backward for the attracting term), by loops."""
    b, k = y.shape
    d = x.shape[1]
    pairs = [(i, j) for i in range(b) for j in range(k) if y[i, j] == 1]
    p = len(pairs)
    counts = [sum(1 for i in range(b) if y[i, j] == 1) for j in range(k)]
    attract = sum(float(((x[i] - c[j]) ** 2).sum()) for i, j in pairs) / 2.0 / p
    grad_x = torch.zeros_like(x)
    grad_c = torch.zeros_like(c)
    for i, j in pairs:  # DiscCentroidsLossFunc.backward
        grad_x[i] += (x[i] - c[j]) / p
        grad_c[j] += (c[j] - x[i]) / (1 + counts[j]) / p
    negatives = 0.0
    for i in range(b):
        for j in range(k):
            if y[i, j] == 0:
                negatives += float(((x[i] - c[j]) ** 2).sum())
    mean = negatives / (b * k)
    repel = min(max(margin - mean, 0.0), 1e6)
    if margin - mean > 0.0:  # d repel / d (x, c) = -1/(BK) d sum(neg)
        for i in range(b):
            for j in range(k):
                if y[i, j] == 0:
                    diff = x[i] - c[j]
                    grad_x[i] += -repel_weight * 2 * diff / (b * k)
                    grad_c[j] += repel_weight * 2 * diff / (b * k)
    assert d == c.shape[1]
    return attract + repel_weight * repel, attract, repel, grad_x, grad_c


@pytest.mark.parametrize("margin", [10.0, 1e4])  # repelling term at 0 / active
def test_centroid_loss_matches_the_reference_loop(margin: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64).requires_grad_()
    c = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_()
    terms = discriminative_centroid_loss(x, TARGETS, c, margin=margin)
    # float32 inside: compare at float32 precision
    terms["centroid"].backward()
    want, attract, repel, grad_x, grad_c = loop_centroid_loss(
        x.detach(), TARGETS, c.detach(), margin
    )
    assert float(terms["centroid"].detach()) == pytest.approx(want, rel=1e-5)
    assert float(terms["attract"].detach()) == pytest.approx(attract, rel=1e-5)
    assert float(terms["repel"].detach()) == pytest.approx(repel, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(x.grad, grad_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c.grad, grad_c, rtol=1e-5, atol=1e-6)


def test_one_label_per_image_is_the_codes_loss() -> None:
    """With one positive per row the pairs are the images: sum / 2 / B and the code's mask."""
    y = torch.eye(4)[[0, 2, 1, 2, 3]]
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(5, 6, generator=g), torch.randn(4, 6, generator=g)
    labels = y.argmax(1)
    attract = ((x - c[labels]) ** 2).sum() / 2.0 / 5
    dist = (x[:, None] - c[None]).pow(2).sum(2)
    dist[torch.arange(5), labels] = 0.0
    repel = torch.clamp(1e3 - dist.sum() / 20, 0.0, 1e6)
    got = discriminative_centroid_loss(x, y, c, margin=1e3)
    torch.testing.assert_close(got["centroid"], attract + 0.01 * repel)


def _stage(features, centroids=None, logits=None):
    b = features.shape[0]
    logits = torch.zeros(b, 4) if logits is None else logits
    return OLTROutput(logits=logits, features=features, centroids=centroids)


class _Model:
    in_stage2 = False

    def start_meta_embedding(self, means, valid):
        self.means, self.valid, self.in_stage2 = means.clone(), valid.clone(), True


def test_criterion_builds_the_class_means_over_ranks_and_starts_stage_2() -> None:
    model = _Model()
    criterion = OLTRCriterion(4, 3, stage2_epoch=2).bind(model).train()
    x = torch.arange(15.0).view(5, 3)
    criterion.set_epoch(0)
    stage1 = criterion(_stage(x), TARGETS)
    assert float(stage1["centroid"]) == 0 and float(stage1["total"]) == float(stage1["bce"])
    criterion.end_epoch(lambda t: 2 * t)  # two ranks with the same shard: same means
    criterion.set_epoch(1)
    criterion(_stage(x + 100), TARGETS)  # epoch 1 is still stage 1: the means follow it
    criterion.end_epoch()
    want = torch.stack([(x[0] + x[2]) / 2, (x[1] + x[2]) / 2, x[4], (x[0] + x[2]) / 2]) + 100
    torch.testing.assert_close(criterion.centroid_means, want)
    assert criterion.centroid_valid.all() and not model.in_stage2
    state = {k: v.clone() for k, v in criterion.state_dict().items()}
    criterion.set_epoch(2)
    assert model.in_stage2
    torch.testing.assert_close(model.means, want)
    # resume: the buffers carry the means, and a started model is not started again
    again = OLTRCriterion(4, 3, stage2_epoch=2)
    again.load_state_dict(state)
    torch.testing.assert_close(again.centroid_means, want)


def test_criterion_stage_2_adds_the_weighted_centroid_loss() -> None:
    g = torch.Generator().manual_seed(2)
    x, c, z = torch.randn(5, 3, generator=g), torch.randn(4, 3, generator=g), torch.randn(5, 4)
    criterion = OLTRCriterion(4, 3, stage2_epoch=1, feature_weight=0.5)
    got = criterion(_stage(x, c, z), TARGETS)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, TARGETS)
    terms = discriminative_centroid_loss(x, TARGETS, c)
    torch.testing.assert_close(got["total"], bce + 0.5 * terms["centroid"])
    assert got.keys() == {"total", "bce", "centroid", "attract", "repel"}


# --------------------------------------------------------------------------- LDAM-DRW
FREQ = [50.0, 20.0, 7.0, 3.0]


def test_drw_weights_are_the_codes() -> None:
    beta = 0.9999
    effective = [1.0 - beta**n for n in FREQ]
    weights = [(1.0 - beta) / e for e in effective]
    weights = [w / sum(weights) * len(FREQ) for w in weights]
    torch.testing.assert_close(drw_weights(FREQ, beta), torch.tensor(weights))
    torch.testing.assert_close(drw_weights(FREQ, 0.0), torch.ones(4))  # the code's beta 0


def test_ldam_drw_reweights_from_its_epoch_on() -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(5, 4, generator=g).tanh()
    criterion = LDAMCriterion(FREQ, max_margin=0.5, scale=30.0, drw_epoch=2)
    out = OLTROutput(logits=z)
    margins, weights = ldam_margins(FREQ, 0.5), drw_weights(FREQ, 0.9999)
    for epoch, weighted in ((0, False), (1, False), (2, True), (5, True)):
        criterion.set_epoch(epoch)
        got = criterion(out, TARGETS)["total"]
        want = 0.0
        for b in range(5):
            for c in range(4):
                s = 30.0 * (float(z[b, c]) - float(TARGETS[b, c]) * float(margins[c]))
                entry = math.log1p(math.exp(-s)) if TARGETS[b, c] else math.log1p(math.exp(s))
                want += entry * (float(weights[c]) if weighted else 1.0)
        assert float(got) == pytest.approx(want / 20, rel=1e-5), epoch
    plain = LDAMCriterion(FREQ, max_margin=0.5, scale=30.0)
    plain.set_epoch(100)
    torch.testing.assert_close(
        plain(out, TARGETS)["total"], ldam_loss(z, TARGETS, margins, scale=30.0)
    )


def test_ldam_drw_method_defaults() -> None:
    from mlcnc.methods import MethodConfig, build_method, display_name, method_defaults

    assert display_name("ldam") == "LDAM (no DRW)" and display_name("ldam_drw") == "LDAM-DRW"
    assert method_defaults("ldam")["loss"]["drw"] is False
    assert method_defaults("ldam_drw")["loss"] == {
        "max_margin": 0.5, "scale": 30.0, "drw": True, "drw_start": 0.8, "drw_beta": 0.9999,
    }  # fmt: skip
    freq = np.array(FREQ)
    for name, want in (("ldam", None), ("ldam_drw", 8)):
        cfg = MethodConfig(name=name, backbone="test_resnet", pretrained=False)
        assert build_method(cfg, 4, freq, epochs=10).criterion.drw_epoch == want
