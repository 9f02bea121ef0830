"""The criterion contract the engine trains with."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from mlcnc.models.output import ModelOutput

AllReduce = Callable[[Tensor], Tensor]
"""Sums a tensor over all processes (identity on one process)."""


class Criterion(nn.Module):
    """A loss module: ``forward(output, targets)`` returns the total and every term.

    Returns a dict of float32 scalars with the key ``"total"`` (what is back-propagated)
    plus one key per term, so logs show each. Stateful criteria (MLC-NC's prototype memory)
    keep their state in buffers, so it is saved and restored with ``state_dict``, and
    override the epoch hooks below. The engine calls ``set_epoch`` before each training
    epoch and ``end_epoch`` after its last step, passing a sum-all-reduce for DDP.

    DDP contract: ``optim.batch_size`` is the global batch and each process passes its
    shard. The mean over processes of every returned value is the single-process value on
    the global batch, and so is the mean over processes of the parameter gradients (what
    DDP applies), for shards of any sizes: every batch-level reduction goes through
    ``mlcnc.losses.distributed`` (global counts, gathered batches). ``forward`` may then be
    a collective: every process calls it each step.

    ``batch_level``: True for a criterion whose value on one sample depends on the other
    samples of the batch (a log-sum-exp, a count or a contrast over the batch). Gradient
    accumulation (``optim.accumulate_grad_batches``) then averages the losses of the
    micro-batches, which is not the loss of their union; the run says so at the start.
    False: a mean over independent samples, which accumulation reproduces exactly.
    """

    batch_level: bool = False

    def forward(self, output: ModelOutput, targets: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Called before each training epoch (0-based); schedules such as warm-ups use it."""

    def end_epoch(self, all_reduce: AllReduce | None = None) -> None:
        """Called after each training epoch; stateful losses update their memory here."""


class LogitLossCriterion(Criterion):
    """Base of the baseline criteria: a loss of the logits alone, logged under one term."""

    term = "loss"

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, output: ModelOutput, targets: Tensor) -> dict[str, Tensor]:
        value = self.loss(output.logits, targets)
        return {"total": value, self.term: value}
