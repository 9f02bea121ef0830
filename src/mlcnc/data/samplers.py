"""Training samplers, deterministic per (seed, epoch) and split by rank: class-aware
sampling (spec B4) and uniform shuffling (``ShuffleSampler``), both with a settable epoch
length so that methods with either sampler can train the same number of steps.

Class-aware sampling:
The sequence of one epoch: a cycling list of the classes, reshuffled every time it wraps
(so each block of C draws is a random permutation of the classes); for each class draw,
the next ``num_samples_cls`` images from that class's own cycling list of positive images,
reshuffled on wrap. Default epoch length max_c n_c x C (every class drawn as often as the
most frequent one), as in the MLC-NC code.

Unlike the reference code (Python's global ``random``, state carried across epochs) the
sequence depends only on (seed, epoch): a numpy Generator is seeded with both in
``__iter__``, so resuming at epoch e replays exactly the same batches. Under DDP every
rank builds the same global sequence, pads it to a multiple of world_size (or drops the
tail with ``drop_last``) and takes the disjoint strided slice ``rank::world_size``, as
``torch.utils.data.DistributedSampler`` does. Do not let a launcher wrap it in another
distributed sampler (Fabric: ``setup_dataloaders(..., use_distributed_sampler=False)``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def _positive_classes(
    labels: np.ndarray, sampling: str, sampler: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the per-class samplers: positives (N, C) bool, class_freq (C,) and the indices of
    the classes with a positive image (warning about the others, which are never drawn)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (N, C), got shape {labels.shape}")
    positives = labels > 0
    class_freq = positives.sum(axis=0)
    empty = np.flatnonzero(class_freq == 0)
    if len(empty) == len(class_freq):
        raise ValueError(f"{sampling} sampling needs at least one class with a positive image")
    if len(empty):
        warnings.warn(
            f"{sampler}: classes {empty.tolist()} have no positive image and are never drawn",
            stacklevel=3,
        )
    return positives, class_freq, np.flatnonzero(class_freq > 0)


class _EpochSampler(Sampler[int]):
    """A global sequence per (seed, epoch), padded (or cut) to a multiple of world_size and
    split ``rank::world_size``. Subclasses define ``global_indices(epoch)``."""

    def __init__(
        self, epoch_length: int, seed: int, rank: int, world_size: int, drop_last: bool
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}"
            )
        if epoch_length < 1:
            raise ValueError(f"epoch_length must be >= 1, got {epoch_length}")
        self.epoch_length = int(epoch_length)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = drop_last
        self.epoch = 0
        if drop_last:
            self.num_samples = self.epoch_length // self.world_size
        else:
            self.num_samples = math.ceil(self.epoch_length / self.world_size)
        self.total_size = self.num_samples * self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose sequence ``__iter__`` yields."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])

    def __len__(self) -> int:
        return self.num_samples

    def _generator(self, epoch: int | None) -> np.random.Generator:
        epoch = self.epoch if epoch is None else int(epoch)
        return np.random.Generator(np.random.PCG64([self.seed, epoch]))

    def global_indices(self, epoch: int | None = None) -> np.ndarray:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        indices = self.global_indices()
        if self.total_size > len(indices):  # pad by repeating from the start
            repeats = math.ceil(self.total_size / len(indices))
            indices = np.tile(indices, repeats)
        indices = indices[: self.total_size]
        return iter(indices[self.rank : self.total_size : self.world_size].tolist())


class ShuffleSampler(_EpochSampler):
    """Uniform random order over ``num_items`` images, ``epoch_length`` samples per epoch
    (None = num_items: one pass), without replacement within each pass; deterministic per
    (seed, epoch) and split by rank like the class-aware sampler. A fixed ``epoch_length``
    gives random and class-aware sampling the same number of steps per epoch."""

    def __init__(
        self,
        num_items: int,
        epoch_length: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if num_items < 1:
            raise ValueError("ShuffleSampler needs at least one item")
        self.num_items = int(num_items)
        super().__init__(epoch_length or num_items, seed, rank, world_size, drop_last)

    def global_indices(self, epoch: int | None = None) -> np.ndarray:
        """The (epoch_length,) sequence of one epoch: concatenated permutations, cut."""
        rng = self._generator(epoch)
        passes = math.ceil(self.epoch_length / self.num_items)
        order = rng.permuted(np.tile(np.arange(self.num_items), (passes, 1)), axis=1)
        return order.ravel()[: self.epoch_length]


class WeightedSampler(_EpochSampler):
    """LM-CLIP's sampler (``WeightedRandomSampler(sw, num_samples=N, replacement=True)``,
    vlm-spec 2.3): ``epoch_length`` (None: N) draws with replacement, image i with
    probability proportional to sw_i = (sum_{c in y_i} N / n_c)^power; deterministic per
    (seed, epoch) and split by rank like the others."""

    def __init__(
        self,
        labels: np.ndarray,
        power: float = 1.0,
        epoch_length: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        from mlcnc.losses.balanced_asl import lmclip_sample_weights

        weights = lmclip_sample_weights(labels, power)
        self.probabilities = weights / weights.sum()
        super().__init__(epoch_length or len(weights), seed, rank, world_size, drop_last)

    def global_indices(self, epoch: int | None = None) -> np.ndarray:
        rng = self._generator(epoch)
        return rng.choice(len(self.probabilities), self.epoch_length, p=self.probabilities)


class ClassAwareSampler(_EpochSampler):
    """Class-aware sampler over a (N, C) multi-hot ``labels`` matrix (see module docstring).

    num_samples_cls: images taken per class draw (MLC-NC 1, DB 3).
    epoch_length:    global samples per epoch before rank splitting; None = max_c n_c x C',
                     C' the number of classes that have at least one positive image.
    Classes without a positive image cannot be drawn: they are skipped with a warning
    naming them (an error if no class has a positive).
    """

    def __init__(
        self,
        labels: np.ndarray,
        num_samples_cls: int = 1,
        epoch_length: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if num_samples_cls < 1:
            raise ValueError(f"num_samples_cls must be >= 1, got {num_samples_cls}")
        positives, class_freq, self.active_classes = _positive_classes(
            labels, "class-aware", "ClassAwareSampler"
        )
        # Positive image indices of every active class.
        self._class_images = [np.flatnonzero(positives[:, c]) for c in self.active_classes]
        if epoch_length is None:
            epoch_length = int(class_freq.max()) * len(self.active_classes)
        self.num_samples_cls = int(num_samples_cls)
        super().__init__(epoch_length, seed, rank, world_size, drop_last)

    def global_indices(self, epoch: int | None = None) -> np.ndarray:
        """The full (epoch_length,) sequence of one epoch, shared by all ranks."""
        rng = self._generator(epoch)
        num_classes = len(self.active_classes)
        num_draws = math.ceil(self.epoch_length / self.num_samples_cls)

        # Class of every draw: concatenated independent permutations of the classes.
        blocks = math.ceil(num_draws / num_classes)
        order = rng.permuted(np.tile(np.arange(num_classes), (blocks, 1)), axis=1)
        draw_class = order.ravel()[:num_draws]

        # Images of every draw: each class's cycling list, reshuffled on every wrap.
        draws = _class_streams(rng, self._class_images, draw_class, self.num_samples_cls)
        return draws.ravel()[: self.epoch_length]


def _class_streams(
    rng: np.random.Generator, class_images: list[np.ndarray], draw_class: np.ndarray, per_draw: int
) -> np.ndarray:
    """The images of every draw, (num_draws, per_draw): for each class, the next images of
    its own cycling list of positives, reshuffled on every wrap (the class-aware sampler's
    per-class lists)."""
    draws = np.empty((len(draw_class), per_draw), dtype=np.int64)
    draws_per_class = np.bincount(draw_class, minlength=len(class_images))
    for k, images in enumerate(class_images):  # per epoch, not per step
        needed = int(draws_per_class[k]) * per_draw
        if needed == 0:
            continue
        wraps = math.ceil(needed / len(images))
        stream = rng.permuted(np.tile(images, (wraps, 1)), axis=1).ravel()[:needed]
        draws[draw_class == k] = stream.reshape(-1, per_draw)
    return draws


class ReversedSampler(_EpochSampler):
    """BBN's reversed sampler for multi-label data (Zhou et al., CVPR 2020, Sec. 3.2).

    BBN draws a class c with probability P_c = w_c / sum_j w_j, w_c = n_max / n_c (so P_c is
    proportional to 1 / n_c), then an image of that class (``BBN: lib/dataset/baseset.py``,
    ``get_weight`` and ``sample_class_index_by_weight``; ``lib/dataset/iNaturalist.py``).
    Multi-label: n_c is the number of training images positive for class c, and the image
    of a class draw is the next one of that class's cycling list of positive images,
    reshuffled on wrap, as ``ClassAwareSampler`` takes them (BBN picks it uniformly at
    random with replacement). Classes are drawn independently (i.i.d. with P_c), not in
    permuted blocks as in class-aware sampling. Classes without a positive image are never
    drawn (a warning names them).

    epoch_length: global samples per epoch; None = the number of images N (one reversed
    image per uniform image, as BBN pairs them). Deterministic per (seed, epoch) and split
    ``rank::world_size`` like the other samplers; its random stream is distinct from a
    ``ShuffleSampler`` with the same seed, so the two halves of a pair are independent.
    """

    stream = 1

    def __init__(
        self,
        labels: np.ndarray,
        epoch_length: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        positives, class_freq, self.active_classes = _positive_classes(
            labels, "reversed", "ReversedSampler"
        )
        counts = class_freq[self.active_classes].astype(np.float64)
        weight = counts.max() / counts
        self.class_probabilities = weight / weight.sum()
        """P_c of every active class, (C',)."""
        self._class_images = [np.flatnonzero(positives[:, c]) for c in self.active_classes]
        super().__init__(epoch_length or len(labels), seed, rank, world_size, drop_last)

    def _generator(self, epoch: int | None) -> np.random.Generator:
        epoch = self.epoch if epoch is None else int(epoch)
        return np.random.Generator(np.random.PCG64([self.seed, epoch, self.stream]))

    def global_indices(self, epoch: int | None = None) -> np.ndarray:
        """The full (epoch_length,) sequence of one epoch, shared by all ranks."""
        rng = self._generator(epoch)
        draw_class = rng.choice(
            len(self.active_classes), size=self.epoch_length, p=self.class_probabilities
        )
        return _class_streams(rng, self._class_images, draw_class, 1).ravel()


class PairedSampler(Sampler[tuple[int, int]]):
    """Yields (i, j) pairs: i from ``first``, j from ``second`` (BBN's and URS's two inputs).

    Both samplers must give the same number of samples per process (same epoch_length,
    world_size, drop_last); each rank takes its own strided share of each global sequence,
    so under DDP the ranks' pairs are disjoint positions of both sequences, deterministic
    per (seed, epoch). ``set_epoch`` and the state go to both. Use with
    ``mlcnc.data.paired.PairedDataset``.
    """

    def __init__(self, first: _EpochSampler, second: _EpochSampler) -> None:
        if len(first) != len(second):
            raise ValueError(
                f"PairedSampler: the samplers give {len(first)} and {len(second)} samples per "
                "process; give them the same epoch_length, world_size and drop_last"
            )
        self.first, self.second = first, second

    def set_epoch(self, epoch: int) -> None:
        self.first.set_epoch(epoch)
        self.second.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.first.epoch

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {"first": self.first.state_dict(), "second": self.second.state_dict()}

    def load_state_dict(self, state: dict[str, dict[str, int]]) -> None:
        self.first.load_state_dict(state["first"])
        self.second.load_state_dict(state["second"])

    def __len__(self) -> int:
        return len(self.first)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self.first, self.second, strict=True))
