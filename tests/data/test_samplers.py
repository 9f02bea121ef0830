"""ClassAwareSampler: the spec B4 sequence, determinism per (seed, epoch), rank splitting."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mlcnc.data import DataConfig, ShuffleSampler, build_sampler
from mlcnc.data.samplers import ClassAwareSampler

# Single-label toy data: class k holds images of one block, sizes 7, 3, 1, 5.
SIZES = [7, 3, 1, 5]
SINGLE = np.repeat(np.eye(4, dtype=np.uint8), SIZES, axis=0)
CLASS_OF = np.repeat(np.arange(4), SIZES)


def test_default_epoch_length_and_class_blocks_are_permutations():
    sampler = ClassAwareSampler(SINGLE, seed=3)
    indices = np.array(list(sampler))
    assert len(sampler) == len(indices) == max(SIZES) * 4
    classes = CLASS_OF[indices]
    for block in classes.reshape(-1, 4):  # every C consecutive draws: each class once
        assert sorted(block.tolist()) == [0, 1, 2, 3]
    for k, size in enumerate(SIZES):  # each class's own list cycles, reshuffled on wrap
        drawn = indices[classes == k]
        assert len(drawn) == max(SIZES)
        members = np.flatnonzero(k == CLASS_OF)
        for start in range(0, len(drawn) - size + 1, size):
            assert sorted(drawn[start : start + size].tolist()) == members.tolist()


def test_num_samples_cls_takes_consecutive_images_of_one_class():
    sampler = ClassAwareSampler(SINGLE, num_samples_cls=3, epoch_length=36, seed=0)
    indices = np.array(list(sampler))
    assert len(indices) == 36
    groups = CLASS_OF[indices].reshape(-1, 3)
    assert (groups == groups[:, :1]).all()  # a draw = 3 images of the same class
    for block in groups[:, 0].reshape(-1, 4):
        assert sorted(block.tolist()) == [0, 1, 2, 3]
    assert len(ClassAwareSampler(SINGLE, num_samples_cls=3, epoch_length=10)) == 10


def test_multilabel_every_class_drawn_equally_often():
    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [1, 0, 0]], dtype=np.uint8)
    indices = np.array(list(ClassAwareSampler(labels, epoch_length=300, seed=1)))
    # Each class is drawn 100 times and each draw is an image holding it, so every class
    # is present in at least 100 sampled images (more through co-occurrence).
    assert (labels[indices].sum(axis=0) >= 100).all()
    assert len(ClassAwareSampler(labels)) == 3 * 3  # default: max n_c x C


def test_deterministic_per_seed_and_epoch_and_independent_of_global_rng():
    a = ClassAwareSampler(SINGLE, seed=5)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    first = list(a)
    random.seed(2)
    np.random.seed(2)
    torch.manual_seed(2)
    assert list(a) == first  # same epoch again: same sequence
    b = ClassAwareSampler(SINGLE, seed=5)
    b.set_epoch(1)
    second = list(b)
    assert second != first
    a.set_epoch(1)
    assert list(a) == second
    assert list(ClassAwareSampler(SINGLE, seed=6)) != first
    resumed = ClassAwareSampler(SINGLE, seed=0)
    resumed.load_state_dict(a.state_dict())
    assert list(resumed) == second


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world_size", [1, 3, 4])
def test_ranks_take_disjoint_slices_of_one_global_sequence(world_size, drop_last):
    length = 30  # not divisible by 4
    samplers = [
        ClassAwareSampler(
            SINGLE, epoch_length=length, seed=2, rank=r, world_size=world_size, drop_last=drop_last
        )
        for r in range(world_size)
    ]
    for s in samplers:
        s.set_epoch(4)
    per_rank = [list(s) for s in samplers]
    sizes = {len(p) for p in per_rank}
    expected = length // world_size if drop_last else -(-length // world_size)
    assert sizes == {expected} and all(len(s) == expected for s in samplers)
    merged = [None] * (expected * world_size)
    for r, part in enumerate(per_rank):
        merged[r::world_size] = part  # positions rank, rank + W, ...: disjoint, complete
    glob = samplers[0].global_indices(epoch=4).tolist()
    if drop_last:
        assert merged == glob[: len(merged)]
    else:
        assert merged == (glob + glob)[: len(merged)]  # padded from the start


def test_empty_classes_warn_and_all_empty_errors():
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]], dtype=np.uint8)
    with pytest.warns(UserWarning, match=r"classes \[1\] have no positive image"):
        sampler = ClassAwareSampler(labels, seed=0)
    assert len(sampler) == 2 * 2  # max n_c x number of classes that can be drawn
    assert set(sampler) <= {0, 1, 2}
    with pytest.raises(ValueError, match="at least one class with a positive"):
        ClassAwareSampler(np.zeros((3, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="rank"):
        ClassAwareSampler(labels[:, :1], rank=2, world_size=2)


def test_build_sampler_kinds():
    cfg = DataConfig(num_samples_cls=2, epoch_length=20)
    class_aware = build_sampler("class_aware", SINGLE, cfg, seed=1, rank=1, world_size=2)
    assert isinstance(class_aware, ClassAwareSampler)
    assert class_aware.num_samples_cls == 2 and len(class_aware) == 10
    # epoch_length applies to random sampling too: the same steps per epoch for every method.
    random_sampler = build_sampler("random", SINGLE, cfg, seed=1, rank=0, world_size=2)
    other = build_sampler("random", SINGLE, cfg, seed=1, rank=1, world_size=2)
    assert isinstance(random_sampler, ShuffleSampler)
    assert len(random_sampler) == len(other) == 10
    assert set(random_sampler) | set(other) == set(range(16))
    one_pass = DataConfig()
    shards = [
        build_sampler("random", SINGLE, one_pass, seed=1, rank=r, world_size=2) for r in (0, 1)
    ]
    assert len(shards[0]) == 8
    assert sorted([*shards[0], *shards[1]]) == list(range(16))
    with pytest.raises(ValueError, match="unknown sampler"):
        build_sampler("balanced", SINGLE, cfg)


def test_shuffle_sampler_passes_are_permutations_and_deterministic():
    sampler = ShuffleSampler(7, epoch_length=17, seed=3)
    sequence = sampler.global_indices()
    assert len(sequence) == 17
    assert sorted(sequence[:7]) == list(range(7)) and sorted(sequence[7:14]) == list(range(7))
    assert np.array_equal(sequence, ShuffleSampler(7, epoch_length=17, seed=3).global_indices())
    sampler.set_epoch(1)
    assert not np.array_equal(sampler.global_indices(), sequence)
    assert np.array_equal(sampler.global_indices(0), sequence)
    ranks = [ShuffleSampler(7, epoch_length=17, seed=3, rank=r, world_size=3) for r in range(3)]
    assert [len(r) for r in ranks] == [6, 6, 6]  # padded to 18 by repeating from the start
    merged = [i for r in ranks for i in r]
    assert sorted(merged) == sorted([*sequence.tolist(), int(sequence[0])])
    with pytest.raises(ValueError, match="at least one item"):
        ShuffleSampler(0)
