"""The NaN watch: a non-finite loss stops the run, naming the step, the terms and the last
good checkpoint, without a host synchronisation on every step."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mlcnc.engine.checkpoint import LAST

if TYPE_CHECKING:
    from mlcnc.engine.setup import Run


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message gives the step, the terms and the last
    good checkpoint."""


class FiniteWatch:
    """Finds a NaN / inf loss without a host synchronisation on every step.

    Each step only updates device tensors (the first bad step and its terms); ``check``
    reads them, summed over ranks, at the log points and at the end of the epoch, and stops
    the run naming the first bad step and every term.
    """

    def __init__(self, device: torch.device, first_step: int) -> None:
        self.step = torch.tensor(first_step, device=device)
        self.bad_step = torch.tensor(-1, device=device)
        self.bad_terms: torch.Tensor | None = None
        self.names: list[str] = []

    def update(self, losses: dict[str, torch.Tensor], starts_step: bool = True) -> None:
        """One batch's losses; ``starts_step``: the first micro-batch of an optimizer step
        (always, without gradient accumulation), so a bad micro-batch names its step."""
        if starts_step:
            self.step += 1
        terms = torch.stack([value.detach().float() for value in losses.values()])
        first = ~torch.isfinite(terms[0]) & (self.bad_step < 0)
        self.bad_step = torch.where(first, self.step, self.bad_step)
        if self.bad_terms is None:
            self.names, self.bad_terms = list(losses), terms
        else:
            self.bad_terms = torch.where(first, terms, self.bad_terms)

    def check(self, run: Run, epoch: int) -> None:
        bad = (self.bad_step >= 0).float()
        if run.world > 1:
            bad = run.fabric.all_reduce(bad, reduce_op="sum")
        if bad.item() == 0:
            return
        if int(self.bad_step.item()) >= 0:
            step = int(self.bad_step.item())
            values = self.bad_terms.tolist() if self.bad_terms is not None else []
            terms = ", ".join(f"{k}={v:.6g}" for k, v in zip(self.names, values, strict=True))
            where = f"step {step} (epoch {epoch + 1})"
        else:
            where, terms = f"epoch {epoch + 1}", "on another rank"
        last = run.folder.checkpoints / LAST
        kept = (
            f"the last good checkpoint is {last}"
            if last.is_file()
            else "no checkpoint was saved yet"
        )
        raise NonFiniteLossError(
            f"non-finite loss at {where} on at least one rank: {terms}; stopping; {kept}"
        )
