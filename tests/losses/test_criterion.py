from __future__ import annotations

import math

import pytest
import torch

from mlcnc.losses import (
    MLCNCLoss,
    collapse_calibration_loss,
    feature_label_alignment_loss,
    two_way_loss,
)
from mlcnc.losses.base import Criterion
from mlcnc.models.output import ModelOutput

B, C, E, P = 5, 4, 6, 3


def fake_output(seed: int = 0) -> ModelOutput:
    generator = torch.Generator().manual_seed(seed)
    projections = torch.nn.functional.normalize(torch.randn(B, C, P, generator=generator), dim=-1)
    return ModelOutput(
        logits=torch.randn(B, C, generator=generator).requires_grad_(),
        class_features=torch.randn(B, C, E, generator=generator).requires_grad_(),
        projections=projections.requires_grad_(),
        label_embeddings=torch.randn(C, E, generator=generator),
    )


TARGETS = torch.tensor(
    [[1.0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0], [0, 1, 0, 0]]
)  # class 3 never positive, sample 2 without a positive


def test_is_a_criterion_and_returns_float32_terms() -> None:
    criterion = MLCNCLoss(C, proj_dim=P, warmup_epochs=0)
    assert isinstance(criterion, Criterion)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fake_output()
        losses = criterion(out, TARGETS)
    assert set(losses) == {"total", "fla", "fpc", "tw"}
    assert all(
        v.dtype == torch.float32 and v.shape == () and torch.isfinite(v) for v in losses.values()
    )


def test_total_is_the_weighted_sum_after_warmup() -> None:
    criterion = MLCNCLoss(C, proj_dim=P, alpha=0.3, beta=0.7, tau1=0.4, tau2=0.2, tp=3.0, tn=0.5)
    criterion.train()
    out = fake_output()
    criterion(out, TARGETS)  # epoch 0: accumulate
    criterion.end_epoch()
    criterion.set_epoch(5)
    losses = criterion(out, TARGETS)
    fla = feature_label_alignment_loss(out.class_features, out.label_embeddings, TARGETS)
    fpc = collapse_calibration_loss(
        out.projections, criterion.prototypes, TARGETS, 0.4, 0.2, valid=criterion.prototype_valid
    )
    tw = two_way_loss(out.logits, TARGETS, tp=3.0, tn=0.5)
    torch.testing.assert_close(losses["fla"], fla)
    torch.testing.assert_close(losses["fpc"], fpc)
    torch.testing.assert_close(losses["tw"], tw)
    torch.testing.assert_close(losses["total"], 0.3 * fla + 0.7 * fpc + tw)
    assert losses["fpc"] > 0


def test_paper_warmup_computes_fla_only() -> None:
    criterion = MLCNCLoss(C, proj_dim=P, recipe="paper")
    out = fake_output()
    losses = criterion(out, TARGETS)
    assert losses["fpc"].item() == 0.0 and losses["tw"].item() == 0.0
    assert not losses["fpc"].requires_grad and not losses["tw"].requires_grad
    torch.testing.assert_close(losses["total"], losses["fla"])
    losses["total"].backward()
    assert out.logits.grad is None and out.projections.grad is None  # not in the graph
    assert out.class_features.grad is not None


def test_official_warmup_keeps_zero_weighted_terms_in_the_graph() -> None:
    criterion = MLCNCLoss(C, proj_dim=P, recipe="official")
    assert criterion.legacy_warmup and criterion.prototype_mode == "cumulative"
    out = fake_output()
    losses = criterion(out, TARGETS)
    assert losses["tw"].item() > 0
    torch.testing.assert_close(losses["total"], losses["fla"])
    losses["total"].backward()
    assert torch.equal(out.logits.grad, torch.zeros_like(out.logits))  # zero, not None
    assert torch.equal(out.projections.grad, torch.zeros_like(out.projections))


def test_first_epoch_fpc_is_zero_without_prototypes() -> None:
    criterion = MLCNCLoss(C, proj_dim=P, warmup_epochs=0)
    losses = criterion(fake_output(), TARGETS)
    assert losses["fpc"].item() == 0.0 and not criterion.prototype_valid.any()
    assert torch.isfinite(losses["total"])


def loop_sums(
    projections: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    sums, counts = torch.zeros(C, P), torch.zeros(C)
    for b in range(targets.shape[0]):
        for c in range(C):
            if targets[b, c] > 0:
                sums[c] += projections[b, c].detach()
                counts[c] += 1
    return sums, counts


def test_per_epoch_prototypes_are_the_previous_epoch_mean() -> None:
    criterion = MLCNCLoss(C, proj_dim=P, recipe="paper").train()
    first, second = fake_output(1), fake_output(2)
    criterion(first, TARGETS)
    criterion(second, TARGETS)
    sums, counts = loop_sums(
        torch.cat([first.projections, second.projections]), torch.cat([TARGETS, TARGETS])
    )
    torch.testing.assert_close(criterion.epoch_sums, sums)
    torch.testing.assert_close(criterion.epoch_counts, counts)
    criterion.end_epoch()
    seen = counts > 0
    torch.testing.assert_close(criterion.prototypes[seen], sums[seen] / counts[seen, None])
    assert criterion.prototype_valid.tolist() == [True, True, True, False]
    assert torch.equal(criterion.prototypes[3], torch.zeros(P))
    assert not criterion.epoch_sums.any() and not criterion.epoch_counts.any()
    # Next epoch: only class 0 is seen; it gets this epoch's mean, the others keep theirs.
    before = criterion.prototypes.clone()
    third = fake_output(3)
    only_class0 = torch.zeros(B, C)
    only_class0[:2, 0] = 1
    criterion(third, only_class0)
    criterion.end_epoch()
    torch.testing.assert_close(criterion.prototypes[0], third.projections[:2, 0].detach().mean(0))
    torch.testing.assert_close(criterion.prototypes[1:], before[1:])


def test_cumulative_prototypes_average_all_epochs() -> None:
    criterion = MLCNCLoss(C, proj_dim=P, recipe="official").train()
    outs = [fake_output(s) for s in range(3)]
    for out in outs:
        criterion(out, TARGETS)
        criterion.end_epoch()
    sums, counts = loop_sums(torch.cat([o.projections for o in outs]), TARGETS.repeat(3, 1))
    seen = counts > 0
    torch.testing.assert_close(criterion.prototypes[seen], sums[seen] / counts[seen, None])
    # per_epoch as an option of the official recipe gives only the last epoch.
    per_epoch = MLCNCLoss(C, proj_dim=P, recipe="official", prototype_mode="per_epoch").train()
    for out in outs:
        per_epoch(out, TARGETS)
        per_epoch.end_epoch()
    last_sums, last_counts = loop_sums(outs[-1].projections, TARGETS)
    torch.testing.assert_close(
        per_epoch.prototypes[seen], last_sums[seen] / last_counts[seen, None]
    )


@pytest.mark.parametrize("in_place", [False, True])
def test_end_epoch_sums_over_ranks_once(in_place: bool) -> None:
    criterion = MLCNCLoss(C, proj_dim=P, recipe="official").train()
    calls = []

    def all_reduce(tensor: torch.Tensor):  # two identical ranks
        calls.append(tensor.shape)
        if in_place:
            tensor.mul_(2)
            return None
        return tensor * 2

    out = fake_output()
    criterion(out, TARGETS)
    criterion.end_epoch(all_reduce)
    criterion(out, TARGETS)
    criterion.end_epoch(all_reduce)
    assert calls == [(C, P + 1), (C, P + 1)]
    sums, counts = loop_sums(out.projections, TARGETS)
    torch.testing.assert_close(criterion.cumulative_counts, 4 * counts)  # 2 epochs x 2 ranks
    torch.testing.assert_close(criterion.cumulative_sums, 4 * sums)


def test_eval_mode_does_not_accumulate_and_state_dict_carries_the_memory() -> None:
    criterion = MLCNCLoss(C, proj_dim=P).eval()
    criterion(fake_output(), TARGETS)
    assert not criterion.epoch_counts.any()
    criterion.train()
    criterion(fake_output(), TARGETS)
    criterion.end_epoch()
    restored = MLCNCLoss(C, proj_dim=P)
    restored.load_state_dict(criterion.state_dict())
    assert {"epoch_sums", "epoch_counts", "prototypes", "prototype_valid"} <= set(
        criterion.state_dict()
    )
    assert torch.equal(restored.prototypes, criterion.prototypes)
    assert torch.equal(restored.prototype_valid, criterion.prototype_valid)
    restored.set_epoch(5)
    criterion.set_epoch(5)
    out = fake_output(9)
    assert torch.equal(restored(out, TARGETS)["total"], criterion(out, TARGETS)["total"])


def test_never_seen_class_gives_no_nan_and_is_left_out() -> None:
    criterion = MLCNCLoss(C, proj_dim=P, warmup_epochs=0).train()
    out = fake_output()
    criterion(out, TARGETS)
    criterion.end_epoch()
    everything = torch.ones(B, C)  # class 3 is positive now but has no prototype
    losses = criterion(fake_output(4), everything)
    assert all(torch.isfinite(v) for v in losses.values())
    valid = torch.tensor([True, True, True, False])
    expected = collapse_calibration_loss(
        fake_output(4).projections, criterion.prototypes, everything, valid=valid
    )
    torch.testing.assert_close(losses["fpc"], expected)
    assert 0 < losses["fpc"].item() < math.log(3) + 2 / 0.5


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match="recipe"):
        MLCNCLoss(C, recipe="nope")
    with pytest.raises(ValueError, match="prototype_mode"):
        MLCNCLoss(C, prototype_mode="ema")
    with pytest.raises(ValueError, match="fpc_reduction"):
        MLCNCLoss(C, fpc_reduction="sum")
    with pytest.raises(ValueError, match=r"proj_dim=7\) got projections \(5, 4, 3\)"):
        MLCNCLoss(C, proj_dim=7)(fake_output(), TARGETS)
    with pytest.raises(ValueError, match="targets"):
        MLCNCLoss(C, proj_dim=P)(fake_output(), TARGETS[:, :3])
    with pytest.raises(ValueError, match="class_features"):
        MLCNCLoss(C)(ModelOutput(logits=torch.zeros(B, C)), TARGETS)
