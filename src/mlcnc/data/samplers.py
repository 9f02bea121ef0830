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
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"labels must be (N, C), got shape {labels.shape}")
        if num_samples_cls < 1:
            raise ValueError(f"num_samples_cls must be >= 1, got {num_samples_cls}")
        positives = labels > 0
        class_freq = positives.sum(axis=0)
        empty = np.flatnonzero(class_freq == 0)
        if len(empty) == len(class_freq):
            raise ValueError("class-aware sampling needs at least one class with a positive image")
        if len(empty):
            warnings.warn(
                f"ClassAwareSampler: classes {empty.tolist()} have no positive image and are "
                "never drawn",
                stacklevel=2,
            )
        self.active_classes = np.flatnonzero(class_freq > 0)
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
        draws = np.empty((num_draws, self.num_samples_cls), dtype=np.int64)
        draws_per_class = np.bincount(draw_class, minlength=num_classes)
        for k, images in enumerate(self._class_images):  # per epoch, not per step
            needed = int(draws_per_class[k]) * self.num_samples_cls
            if needed == 0:
                continue
            wraps = math.ceil(needed / len(images))
            stream = rng.permuted(np.tile(images, (wraps, 1)), axis=1).ravel()[:needed]
            draws[draw_class == k] = stream.reshape(-1, self.num_samples_cls)
        return draws.ravel()[: self.epoch_length]
