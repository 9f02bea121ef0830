"""Batch-level reductions over the global batch under DDP (exact losses and gradients).

``optim.batch_size`` is the global batch: with W processes each one holds a shard of it
(B_r images, sum_r B_r = B), and every batch-level reduction of every loss is over the
global batch, never over a shard: means over entries, over samples or over positive pairs
divide by the global count, and the two-way loss's per-class log-sum-exp runs over all B
images. A loss and its gradient therefore do not depend on how many processes share the
batch, nor on how it is split (the last batch of an epoch may split unevenly).

The contract every criterion keeps: under an initialised process group, the mean over
processes of the value each returns (the total and every term) is the single-process value
on the global batch, and so is the mean over processes of each process's parameter
gradient, which is what DDP applies. These tools give it:

- ``global_mean(local_sum, local_count)`` = local_sum * W / (count summed over processes),
  the count all-reduced without gradient: a mean, or a ratio of sums, over the global batch.
- ``global_entry_mean(entries)``: the mean of every entry of (B_r, ...) over the global batch.
- ``global_sum(local_sum)`` = local_sum * W: a sum over the global batch (no collective).
- ``gather_batch(x)`` concatenates every process's shard (B_r, ...) into (B, ...), shards of
  unequal sizes included, and ``gather_stack(x)`` stacks same-shaped per-process tensors
  (e.g. per-class statistics) into (W, ...); gradients flow back through both. Every
  process then computes the same global value V; the backward sums each shard's gradient
  over the W processes (W dV/dx_r) and DDP's average divides by W again: dV/dtheta exactly.
  The two-way loss gathers its per-class log-sum-exps and counts (4 x C values) this way.

Every helper here is a collective when W > 1 (every process must call it, in the same
order; the losses never branch on their local data before one). Without an initialised
process group, or inside ``with local_batch():``, W is 1 and all of them are no-ops.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor

_state = threading.local()


@contextmanager
def local_batch() -> Iterator[None]:
    """Reduce over this process's batch alone inside the block (no collective), e.g. to
    compute a loss on one rank only while a process group is initialised."""
    previous = getattr(_state, "local", False)
    _state.local = True
    try:
        yield
    finally:
        _state.local = previous


def world_size() -> int:
    """Processes the current batch is spread over: the default process group's size;
    1 without an initialised one, or inside ``local_batch()``."""
    if getattr(_state, "local", False) or not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def global_mean(local_sum: Tensor, local_count: Tensor | int | float) -> Tensor:
    """Mean over the global batch from this shard's sum and count: local_sum * W / count,
    the count summed over processes (no gradient). 0 when the global count is 0.

    The mean over processes of the result is (sum of sums) / (sum of counts), and so is the
    mean of its gradients, for shards of any sizes. With W = 1: local_sum / max(count, 1).
    """
    size = world_size()
    if size == 1:  # no collective, no new tensor: exactly the local mean
        if isinstance(local_count, Tensor):
            return local_sum / local_count.detach().clamp(min=1).to(local_sum.dtype)
        return local_sum / max(local_count, 1)
    if isinstance(local_count, Tensor):
        kind = torch.float64 if local_count.is_floating_point() else torch.int64
        count = local_count.detach().to(kind).clone()
    else:  # filled on the device: no host-to-device copy, no synchronisation
        kind = torch.float64 if isinstance(local_count, float) else torch.int64
        count = torch.full((), local_count, dtype=kind, device=local_sum.device)
    dist.all_reduce(count)
    return local_sum * size / count.clamp(min=1).to(local_sum.dtype)


def global_entry_mean(entries: Tensor) -> Tensor:
    """The mean of every entry of a per-sample tensor (B_r, ...) over the global batch:
    ``global_mean`` of its sum and its number of entries."""
    return global_mean(entries.sum(), entries.numel())


def global_sum(local_sum: Tensor) -> Tensor:
    """A sum over the global batch from this shard's sum: local_sum * W (no collective);
    the mean over processes of the result, and of its gradient, is the global sum's."""
    return local_sum * world_size()


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0 for shards of the given sizes; backward sums over processes."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: tuple[int, ...]) -> Tensor:  # type: ignore[override]
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        longest = max(sizes)
        padded = x.contiguous()
        if x.shape[0] < longest:  # pad to the longest shard: all_gather needs one shape
            padded = torch.cat([padded, padded.new_zeros((longest - x.shape[0], *x.shape[1:]))])
        buffers = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(buffers, padded)
        return torch.cat([b[:n] for b, n in zip(buffers, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        # Each process back-propagated its own copy of the global value: sum them.
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        start = sum(ctx.sizes[: ctx.rank])
        return total[start : start + ctx.sizes[ctx.rank]], None


def shard_sizes(local_size: int, device: torch.device) -> tuple[int, ...]:
    """The batch size of every process's shard (a collective when W > 1)."""
    size = world_size()
    if size == 1:
        return (local_size,)
    mine = torch.tensor([local_size], dtype=torch.int64, device=device)
    every = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(every, mine)
    return tuple(int(n) for n in torch.cat(every).tolist())


def gather_batch(x: Tensor) -> Tensor:
    """Every process's shard (B_r, ...) concatenated in rank order into (B, ...).

    Shards may differ in size (sizes are gathered first, shards padded, gathered and cut;
    on a GPU reading the sizes synchronises the host, so prefer ``gather_stack`` of
    fixed-size statistics where a loss allows it).
    Differentiable: the gradient of shard r is the sum over processes of their gradients
    with respect to it, so a global value every process computes from the gathered batch
    gets the exact global gradient after DDP's average. Returns ``x`` itself when W = 1.
    """
    if world_size() == 1:
        return x
    return _GatherRows.apply(x, shard_sizes(x.shape[0], x.device))


def gather_stack(x: Tensor) -> Tensor:
    """Every process's ``x`` (same shape everywhere, e.g. per-class statistics) stacked in
    rank order into (W, ...); differentiable like ``gather_batch``, without its size
    exchange (no host synchronisation). ``x[None]`` when W = 1."""
    size = world_size()
    if size == 1:
        return x.unsqueeze(0)
    return _GatherRows.apply(x.unsqueeze(0), (1,) * size)
