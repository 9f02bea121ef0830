"""Settings that train without an error but not as a user expects: each is said in one line.

- An EMA with too few steps for its decay (``train.ema_decay`` 0.9997 over a few hundred
  steps) is still mostly the weights of the first step; when it wins the selection (it can,
  on a short run), the table and the "loaded ..." line of evaluate / predict / export say
  how much of it is still the first step's weights (``ema_note``).
- MLC-NC with ``optim.epochs`` <= its loss warm-up trains L_FLA only (``start_warnings``).
- ``train.limit_eval_batches`` scores a part of each split: the printed mAP is marked.
- Gradient accumulation with a loss that has a term over the batch (``Criterion
  .batch_level``: MLC-NC's two-way log-sum-exp, OLTR, contrastive terms) is not the loss of
  the effective batch (``start_warnings``).
- ``optim.milestones`` at or after ``optim.epochs`` never lower the lr in the run.
- ``train.num_nodes`` > 1 without a launcher would wait forever for the other nodes
  (``check_launcher``).
"""

from __future__ import annotations

import math
from typing import Any

from mlcnc.schema import ConfigError

# The EMA is called "barely moved" when the first step's weights still weigh more than half
# of it: fewer than about 0.7 / (1 - decay) steps without timm's warm-up.
STILL_INITIAL = 0.5


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The decay timm's ModelEmaV3 applies at update ``step`` (1-based, as the loop passes
    it): 0 at the first update (a copy), then ``decay`` or, with the warm-up,
    ``1 - (1 + s) ** -2/3`` capped at ``decay``."""
    s = max(0, step - 1)
    if s <= 0:
        return 0.0
    if warmup:
        return max(min(1.0 - (1.0 + s) ** (-2.0 / 3.0), decay), 0.0)
    return decay


def first_step_share(steps: int, decay: float, warmup: bool) -> float:
    """How much the EMA after ``steps`` updates still weighs the weights of the first step
    (the product of the decays of updates 2..steps)."""
    if steps <= 1:
        return 1.0
    if not warmup:
        return decay ** (steps - 1)
    log_share = 0.0
    for step in range(2, steps + 1):
        d = ema_decay_at(step, decay, warmup)
        if d <= 0.0:
            return 0.0
        log_share += math.log(d)
        if log_share < -50:
            return 0.0
    return math.exp(log_share)


def ema_note(steps: int | None, decay: float, warmup: bool) -> str | None:
    """One clause for EMA weights that barely moved from the first step's, else None."""
    if steps is None or not decay:
        return None
    share = first_step_share(int(steps), float(decay), bool(warmup))
    if share <= STILL_INITIAL:
        return None
    return (
        f"WARNING: this EMA averages only {int(steps)} steps at train.ema_decay={decay:g}, so "
        f"{100 * share:.1f}% of it is still the weights of the first step (it needs about "
        f"{1 / (1 - decay):,.0f} steps; train.ema_warmup=true or a smaller ema_decay suits a "
        "short run)"
    )


def ema_note_from_state(state: dict[str, Any], epoch: int | None = None) -> str | None:
    """``ema_note`` for a checkpoint's EMA weights (the steps at ``epoch`` from its history
    when given, else the checkpoint's own step)."""
    train = (state.get("config") or {}).get("train") or {}
    steps = state.get("step")
    if epoch is not None:
        for record in state.get("history") or []:
            if isinstance(record, dict) and record.get("epoch") == epoch and "step" in record:
                steps = record["step"]
    try:
        return ema_note(steps, float(train.get("ema_decay", 0.0)), bool(train.get("ema_warmup")))
    except (TypeError, ValueError):
        return None


def partial_eval_note(limit_eval_batches: int | None) -> str | None:
    """The mark of a metric computed on a part of its split."""
    if limit_eval_batches is None:
        return None
    return (
        f"PARTIAL: scored on the first {limit_eval_batches} batch(es) of each split only "
        "(train.limit_eval_batches); `mlcnc evaluate RUN` scores the whole split"
    )


def start_warnings(cfg: Any, criterion: Any, steps_per_epoch: int) -> list[str]:
    """Lines to say before training: settings that train, but not as meant."""
    lines = []
    o, t = cfg.optim, cfg.train
    warmup = getattr(criterion, "warmup_epochs", None)
    if isinstance(warmup, int) and warmup > 0 and o.epochs <= warmup:
        key = "method.loss.warmup_epochs"
        lines.append(
            f"WARNING: optim.epochs={o.epochs} is not more than the loss warm-up ({key}="
            f"{warmup}): this run trains L_FLA only, never L_FPC or L_TW; raise optim.epochs "
            f"or lower {key}"
        )
    if t.ema_decay > 0 and not t.ema_warmup:
        total = o.epochs * steps_per_epoch
        note = ema_note(total, t.ema_decay, False)
        if note is not None:
            lines.append(note.replace("this EMA averages", "the EMA will average"))
    k = o.accumulate_grad_batches
    if k > 1 and getattr(criterion, "batch_level", False):
        lines.append(
            f"WARNING: optim.accumulate_grad_batches={k} with method {cfg.method.name}, whose "
            f"loss has a term over the batch: each step averages the losses of {k} batches "
            f"of {o.batch_size}, which is not the loss of one batch of {k * o.batch_size}; "
            "raise optim.batch_size instead for the same loss"
        )
    late = [m for m in o.milestones if m >= o.epochs]
    if o.schedule == "step" and late:
        lines.append(
            f"WARNING: optim.milestones {list(o.milestones)}: epoch(s) "
            f"{', '.join(map(str, late))} are not before optim.epochs={o.epochs} (epochs count "
            "from 0), so the lr is never multiplied by optim.gamma there in this run"
        )
    if t.limit_eval_batches is not None:
        lines.append(
            f"train.limit_eval_batches={t.limit_eval_batches}: val and test are scored on "
            "part of each split; the printed mAP is marked PARTIAL"
        )
    return lines


LAUNCH_VARIABLES = ("SLURM_NTASKS", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "LSB_JOBID")


def check_launcher(cfg: Any, environ: dict[str, str] | None = None) -> None:
    """``train.num_nodes`` > 1 needs a launcher (torchrun, SLURM's srun, MPI, LSF) that
    starts the processes of every node; without one Fabric waits for them forever."""
    import os

    nodes = cfg.train.num_nodes
    env = os.environ if environ is None else environ
    if nodes > 1 and not any(env.get(name) for name in LAUNCH_VARIABLES):
        raise ConfigError(
            f"train.num_nodes={nodes} needs a launcher that starts the processes on every "
            "node (torchrun --nnodes, or SLURM's srun in an sbatch job); none is set up here "
            "(no WORLD_SIZE or SLURM_NTASKS), so the run would wait forever for the other "
            "nodes. Use train.num_nodes=1 on one machine"
        )
