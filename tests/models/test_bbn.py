"""BBN: cumulative learning, the reversed and paired samplers, the paired dataset, the
bilateral-branch model and its loss, against their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from mlcnc.data.paired import PairedDataset
from mlcnc.data.samplers import PairedSampler, ReversedSampler, ShuffleSampler
from mlcnc.losses.bbn import BBNCriterion
from mlcnc.models.backbone import create_backbone
from mlcnc.models.bbn import BBNModel, bbn_alpha
from mlcnc.models.branches import BBNOutput, split_backbone
from mlcnc.models.output import ModelOutput

# Single-label rows so the class of every drawn image is known: counts 8, 4, 2, 1.
SINGLE = np.zeros((15, 4), dtype=np.uint8)
SINGLE[np.arange(15), [0] * 8 + [1] * 4 + [2] * 2 + [3]] = 1


def test_cumulative_alpha_follows_the_parabola() -> None:
    assert bbn_alpha(0, 10) == 1.0
    assert bbn_alpha(5, 10) == pytest.approx(0.75)
    assert bbn_alpha(9, 10) == pytest.approx(1 - 0.81)
    assert bbn_alpha(12, 10) == 0.0
    with pytest.raises(ValueError, match="alpha_epochs"):
        bbn_alpha(0, 0)


def test_reversed_sampler_draws_classes_inversely_to_their_counts() -> None:
    sampler = ReversedSampler(SINGLE, epoch_length=30000, seed=3)
    weights = np.array([8 / 8, 8 / 4, 8 / 2, 8 / 1])  # n_max / n_c
    assert np.allclose(sampler.class_probabilities, weights / weights.sum())
    drawn = SINGLE[sampler.global_indices(0)].argmax(axis=1)
    frequency = np.bincount(drawn, minlength=4) / len(drawn)
    assert np.allclose(frequency, weights / weights.sum(), atol=0.01)
    # Within a class the images cycle: the 8 images of class 0 are drawn evenly.
    class0 = sampler.global_indices(0)[drawn == 0]
    counts = np.bincount(class0, minlength=8)[:8]
    assert counts.max() - counts.min() <= 1


def test_reversed_sampler_is_deterministic_and_split_by_rank() -> None:
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]])
    a = ReversedSampler(labels, seed=5)
    b = ReversedSampler(labels, seed=5)
    assert len(a) == 7
    assert np.array_equal(a.global_indices(2), b.global_indices(2))
    assert not np.array_equal(a.global_indices(2), a.global_indices(3))
    # Every drawn image is positive for some class; the default epoch is one image per image.
    assert labels[a.global_indices(0)].sum(axis=1).min() >= 1
    shares = [ReversedSampler(labels, seed=5, rank=r, world_size=2) for r in range(2)]
    for s in shares:
        s.set_epoch(4)
    padded = np.concatenate([a.global_indices(4), a.global_indices(4)[:1]])  # 8 = 2 x 4
    assert list(shares[0]) == padded[0::2].tolist()
    assert list(shares[1]) == padded[1::2].tolist()
    with pytest.warns(UserWarning, match=r"classes \[2\] have no positive"):
        ReversedSampler(np.array([[1, 0, 0], [0, 1, 0]]))


def test_paired_sampler_zips_the_rank_shares_of_both_samplers() -> None:
    labels = SINGLE
    for rank in range(2):
        first = ShuffleSampler(len(labels), seed=1, rank=rank, world_size=2)
        second = ReversedSampler(labels, seed=1, rank=rank, world_size=2)
        paired = PairedSampler(first, second)
        paired.set_epoch(3)
        assert first.epoch == second.epoch == paired.epoch == 3
        pairs = list(paired)
        assert len(pairs) == len(paired) == 8
        assert [i for i, _ in pairs] == list(first)
        assert [j for _, j in pairs] == list(second)
    # The uniform and reversed streams are not the same random sequence.
    assert ShuffleSampler(15, seed=1).global_indices(0).tolist() != (
        ReversedSampler(labels, seed=1).global_indices(0).tolist()
    )
    with pytest.raises(ValueError, match="same epoch_length"):
        PairedSampler(ShuffleSampler(15), ReversedSampler(labels, epoch_length=10))


class IndexImages(Dataset):
    """Item i: an image filled with i, the multi-hot row of ``labels``, i."""

    def __init__(self, labels: np.ndarray, size: int = 16) -> None:
        self.labels, self.size = labels, size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = torch.full((3, self.size, self.size), float(i) / len(self.labels))
        return image, torch.tensor(self.labels[i], dtype=torch.float32), i


def test_paired_dataset_batches_two_images_per_sample() -> None:
    sampler = PairedSampler(ShuffleSampler(15, seed=0), ReversedSampler(SINGLE, seed=0))
    loader = DataLoader(PairedDataset(IndexImages(SINGLE, 4)), batch_size=5, sampler=sampler)
    pairs = list(sampler)
    images, targets, index = next(iter(loader))
    assert images.shape == (5, 2, 3, 4, 4) and targets.shape == (5, 2, 4)
    for b, (i, j) in enumerate(pairs[:5]):
        assert index[b] == i
        assert images[b, 0, 0, 0, 0].item() == pytest.approx(i / 15)
        assert images[b, 1, 0, 0, 0].item() == pytest.approx(j / 15)
        assert torch.equal(targets[b, 1], torch.tensor(SINGLE[j], dtype=torch.float32))
    with pytest.raises(TypeError, match="index pairs"):
        PairedDataset(IndexImages(SINGLE))[3]


@pytest.fixture(scope="module")
def model() -> BBNModel:
    torch.manual_seed(0)
    return BBNModel(num_classes=3, alpha_epochs=4, backbone="resnet18", pretrained=False)


def test_bbn_logits_match_the_mixing_formula(model: BBNModel) -> None:
    model.eval()
    torch.manual_seed(1)
    pair = torch.randn(2, 2, 3, 16, 16)
    model.set_epoch(2)
    assert model.alpha == pytest.approx(0.75)
    out = model(pair)
    assert out.alpha == pytest.approx(0.75)
    with torch.no_grad():
        f_c = model.conventional(model.trunk(pair[:, 0])).mean(dim=(2, 3))
        f_r = model.rebalancing(model.trunk(pair[:, 1])).mean(dim=(2, 3))
        w_c, w_r = model.classifier.weight[:, :512], model.classifier.weight[:, 512:]
        expected = 2 * (0.75 * f_c @ w_c.T + 0.25 * f_r @ w_r.T) + model.classifier.bias
        assert torch.allclose(out.logits, expected, atol=1e-5)
        # Test time: both branches on the same image, concatenated (BBN's valid_model).
        image = pair[:, 0]
        shared = model.trunk(image)
        both = torch.cat(
            [
                model.conventional(shared).mean(dim=(2, 3)),
                model.rebalancing(shared).mean(dim=(2, 3)),
            ],
            dim=1,
        )
        test_out = model(image)
        assert test_out.alpha is None
        assert torch.allclose(test_out.logits, model.classifier(both), atol=1e-5)
    # The branches are separate parameters.
    assert model.conventional.conv1.weight.data_ptr() != model.rebalancing.conv1.weight.data_ptr()


def test_bbn_needs_set_epoch_in_training() -> None:
    fresh = BBNModel(num_classes=2, alpha_epochs=3, backbone="resnet18", pretrained=False)
    fresh.train()
    with pytest.raises(RuntimeError, match="set_epoch"):
        fresh(torch.randn(2, 2, 3, 16, 16))
    with pytest.raises(ValueError, match="two-branch models split a torchvision ResNet"):
        BBNModel(num_classes=2, alpha_epochs=3, backbone="convnext_atto", pretrained=False)


@pytest.mark.parametrize("split", ["block", "stage"])
def test_efficientnet_split_is_the_whole_backbone(split: str) -> None:
    """Trunk then last part is the backbone's forward; ``block`` splits off the last block
    and the head convolution, ``stage`` everything at the final stride (stride 16 in)."""
    torch.manual_seed(0)
    full = create_backbone("tf_efficientnet_lite0", False).eval()
    torch.manual_seed(0)  # the same initial weights
    trunk, part, width = split_backbone("tf_efficientnet_lite0", False, split)
    trunk.eval(), part.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        inner = trunk(images)
        assert torch.allclose(part(inner), full(images), atol=1e-5)
    assert width == full.num_features == 1280
    assert inner.shape[-1] == (2 if split == "block" else 4)  # 64 / 32 or 64 / 16
    blocks = [m for m in part.modules() if type(m).__name__ == "InvertedResidual"]
    assert len(blocks) == (1 if split == "block" else 5)  # Lite0: stage 6 has 4, stage 7 one


def test_bbn_criterion_by_hand() -> None:
    z = torch.tensor([[0.5, -1.0]])
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # uniform image, reversed image

    def bce(zz: float, yy: float) -> float:
        return math.log1p(math.exp(-zz)) if yy == 1 else math.log1p(math.exp(zz))

    uniform = (bce(0.5, 1) + bce(-1.0, 0)) / 2
    reversed_ = (bce(0.5, 0) + bce(-1.0, 1)) / 2
    out = BBNCriterion()(BBNOutput(logits=z, alpha=0.25), y)
    assert out["total"].item() == pytest.approx(0.25 * uniform + 0.75 * reversed_, rel=1e-6)
    assert out["bce_uniform"].item() == pytest.approx(uniform, rel=1e-6)
    with pytest.raises(ValueError, match=r"targets must be \(B, 2, C\)"):
        BBNCriterion()(BBNOutput(logits=z, alpha=0.5), y[:, 0])
    with pytest.raises(ValueError, match="without alpha"):
        BBNCriterion()(ModelOutput(logits=z), y)


def test_bbn_training_step_through_the_paired_loader(model: BBNModel) -> None:
    labels = np.array([[1, 0, 0]] * 6 + [[1, 1, 0]] * 2 + [[0, 1, 0], [0, 0, 1]])
    sampler = PairedSampler(ShuffleSampler(10, seed=0), ReversedSampler(labels, seed=0))
    loader = DataLoader(PairedDataset(IndexImages(labels)), batch_size=4, sampler=sampler)
    images, targets, _ = next(iter(loader))
    model.train()
    model.zero_grad()
    model.set_epoch(1)
    losses = BBNCriterion()(model(images), targets)
    assert torch.isfinite(losses["total"])
    losses["total"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["conventional.conv1.weight"].abs().sum() > 0
    assert grads["rebalancing.conv1.weight"].abs().sum() > 0
