"""The training loop, on Lightning Fabric; read it top to bottom.

``train(cfg)`` plans a resume (``mlcnc.engine.resume``) and builds Fabric (launching, DDP,
precision), then each process runs ``run``, which reads in five parts:

1. ``setup`` (``mlcnc.engine.setup``): data and samplers -> method (model, criterion,
   sampler kind) -> optimiser and schedule -> EMA -> state restored from a checkpoint when
   resuming (``mlcnc.engine.resume``);
2. ``train_epoch``: forward, loss dict, backward, step, schedule, EMA; prototype update
   over all ranks at the end;
3. ``evaluate``: the regular and the EMA model scored from one pass over each split (each
   image decoded once);
4. ``select_and_save``: the selection (see ``mlcnc.engine.selection``: the best epoch and
   variant, regular or EMA, on val; the last epoch without val), checkpoints,
   selection.json, the metrics line;
5. ``finish``: per-class AP and plots, and the run's result (``mlcnc.engine.records``).

Precision: Fabric runs the training forward in ``train.precision`` (inputs converted by its
precision plugin); the criterion always sees float32 outputs and targets with autocast off
and float32 as the default dtype. Evaluation runs each model in the dtype of its weights
(see ``mlcnc.engine.evaluation``), so ``mlcnc evaluate`` reproduces the logged metrics.

Extending a run: ``train(cfg, resume=RUN, force=True)`` with a larger ``optim.epochs`` (or
any other change to ``optim:`` or to the steps per epoch) continues at the saved step with
the schedule of the new config rebuilt over the new total and positioned at that step: the
same schedule shape stretched to the new length, as if the run had been planned that way
(``mlcnc.engine.optim.build_scheduler_at``). OneCycle's LR therefore jumps from its
annealed end value to the new plan's value at that step. An unchanged config restores the
saved schedule exactly.

Records survive any kill (see ``select_and_save``): every checkpoint carries the epoch
history, ``last.ckpt`` is the commit point, ``best.ckpt`` follows it, and the metrics files
are rebuilt from the history, so a run folder plus ``--resume`` gives exactly the records
and checkpoints of an uninterrupted run. A folder holding a run is never reused silently,
and ``--resume`` refuses data that differ from the checkpoint's (``resume.check_resume_data``).

Reproducibility: all RNGs are reseeded at the start of every epoch from (seed, epoch, rank)
and the samplers are seeded per (seed, epoch), so a run resumed from an epoch-end checkpoint
continues exactly (model, EMA, optimizer, scheduler, criterion buffers, step and epoch are
restored from the checkpoint).
"""

from __future__ import annotations

import atexit
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric import Fabric
from tqdm.auto import tqdm

from mlcnc.config import Config, resolve_config
from mlcnc.engine import selection as sel
from mlcnc.engine.checkpoint import BEST, LAST, save_checkpoint
from mlcnc.engine.evaluation import collapse_diagnostics, predict_models, score_predictions
from mlcnc.engine.finite import FiniteWatch, NonFiniteLossError
from mlcnc.engine.records import TrainResult, epoch_line
from mlcnc.engine.resume import Resume, plan_resume
from mlcnc.engine.run_folder import RunFolderError
from mlcnc.engine.setup import Run, make_fabric, setup, uses_channels_last
from mlcnc.io import jsonable

__all__ = [
    "NonFiniteLossError",
    "TrainResult",
    "TrainingInterrupted",
    "make_fabric",
    "run",
    "train",
]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during training; the message says where and how to continue."""


def _interrupted(proc: Run, epoch: int) -> TrainingInterrupted:
    """What Ctrl-C in ``epoch`` (0-based) leaves: the run folder, its last checkpoint."""
    folder = proc.folder.path
    where = f"interrupted in epoch {epoch + 1} at step {proc.step}"
    if (folder / "checkpoints" / LAST).is_file():
        return TrainingInterrupted(
            f"{where}; {folder} keeps its last checkpoint: continue with "
            f"`mlcnc train --resume {folder}`"
        )
    return TrainingInterrupted(
        f"{where}, before the first checkpoint; nothing to resume in {folder}: start it "
        "again (with --overwrite)"
    )


def train(
    cfg: Config | None,
    *,
    config_name: str = "custom",
    resume: str | Path | None = None,
    force: bool = False,
    overwrite: bool = False,
) -> TrainResult:
    """Train ``cfg`` (or continue ``resume``, a run folder or checkpoint) and return the result.

    A new run refuses a ``train.output`` folder that already holds a run unless
    ``overwrite`` (which removes the old run's files first).

    ``resume``: a run folder (its ``checkpoints/last.ckpt``; a folder killed before its
    first checkpoint starts over from its ``config.yaml``) or a checkpoint file inside a run
    folder (``RUN/checkpoints/x.ckpt``); the run continues in that folder, or in
    ``cfg.train.output`` where that names another folder (which must not hold a run). A
    loose checkpoint file continues only into such an explicit folder. With ``cfg=None``
    the checkpoint's config is used; a different ``cfg``, or training data that differ from
    the checkpoint's (class names, their order, the images and labels), is refused naming
    the difference unless ``force`` (a different number of classes always is).
    """
    plan = Resume("overwrite" if overwrite else "new", force=force)
    if resume is not None:
        if overwrite:
            raise RunFolderError(
                "--resume continues a run and --overwrite replaces one: give only one of them"
            )
        cfg, plan = plan_resume(cfg, Path(resume), force)
    if cfg is None:
        raise ValueError("train() needs a config or a run to resume")
    cfg = resolve_config(cfg)
    fabric = make_fabric(cfg)
    return fabric.launch(run, cfg, config_name, plan)


def seed_all(seed: int, epoch: int, rank: int) -> None:
    """Seed python, numpy and torch for (seed, epoch, rank): augmentation and dropout differ
    per rank and per epoch, and a resumed epoch replays exactly."""
    value = (seed * 1_000_003 + epoch * 10_007 + rank) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _destroy_process_group() -> None:
    """Tear the process group down while the interpreter is still whole: left to
    interpreter shutdown, gloo's worker threads can abort the process (SIGABRT, exit -6)
    after a run that finished (pytorch/pytorch#179291)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run(fabric: Fabric, cfg: Config, config_name: str, plan: Resume) -> TrainResult:
    """One process's run: setup, then per epoch train, evaluate, select and save; finish."""
    if fabric.world_size > 1:  # registered once per process, however many runs it makes
        atexit.unregister(_destroy_process_group)
        atexit.register(_destroy_process_group)
    proc = setup(fabric, cfg, config_name, plan)  # this process's Run
    o, t = cfg.optim, cfg.train
    show = proc.rank == 0 and t.progress
    try:
        epochs_bar = tqdm(
            total=o.epochs, initial=proc.start_epoch, desc="epochs", unit="epoch", disable=not show
        )
        record: dict[str, Any] = proc.history[-1] if proc.history else {}
        epoch = proc.start_epoch
        for epoch in range(proc.start_epoch, o.epochs):
            record = train_epoch(proc, epoch)
            last_epoch = epoch + 1 == o.epochs
            if last_epoch or (epoch + 1) % t.eval_every == 0:
                record |= evaluate(proc)
                step_on_metric(proc, record)
            select_and_save(proc, epoch, record)
            epochs_bar.update(1)
            fabric.barrier()
        epochs_bar.close()
        return finish(proc, record)
    except KeyboardInterrupt as interrupt:
        proc.folder.close("failed")  # releases the lock: a later --resume may continue
        if isinstance(interrupt, TrainingInterrupted):
            raise
        raise _interrupted(proc, epoch) from None
    except BaseException:
        proc.folder.close("failed")  # releases the lock: a later --resume may continue
        raise
    finally:
        if t.deterministic:  # a process-wide switch: off again for whatever runs next
            torch.use_deterministic_algorithms(False)
            torch.backends.cudnn.deterministic = False


def train_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """One epoch of training; returns its record (epoch, step, mean loss terms, speed).

    Gradient accumulation (``optim.accumulate_grad_batches`` = k): the batches of an epoch
    go in groups of k, the last group holding what is left (n mod k when k does not divide
    the epoch's n batches); each batch's loss is divided by its group's size, so a group's
    gradient is that of the mean of its batch losses. The gradients are zeroed at the start
    of every group (nothing carries across steps, epochs or a resume) and DDP synchronises
    them only on a group's last batch (``fabric.no_backward_sync``). Clipping, the optimizer
    and schedule step, the EMA, the step count and the step log follow each group.
    """
    cfg, fabric = run.cfg, run.fabric
    o, t = cfg.optim, cfg.train
    seed_all(t.seed, epoch, run.rank)
    run.sampler.set_epoch(epoch)
    run.criterion.set_epoch(epoch)
    if hasattr(run.net, "set_epoch"):
        run.net.set_epoch(epoch)  # epoch-dependent models (BBN's cumulative learning)
    run.model.train()
    run.criterion.train()
    watch = FiniteWatch(fabric.device, run.step)
    term_sums: dict[str, torch.Tensor] = {}
    step_sums: dict[str, torch.Tensor] = {}  # this optimizer step's batches (the log line)
    images_seen, num_batches = 0, 0
    k, n = o.accumulate_grad_batches, run.batches_per_epoch
    tail = n - n % k  # the first batch of the epoch's shorter last group (n when none)
    started = time.perf_counter()
    bar = tqdm(
        total=n * o.batch_size,
        desc=f"epoch {epoch + 1}/{o.epochs}",
        unit="img",
        leave=False,
        disable=not (run.rank == 0 and t.progress),
    )
    for batch_index, (images, targets, sample_indices) in enumerate(run.train_loader):
        if batch_index >= n:
            break
        group = k if batch_index < tail else n - tail  # batches in this optimizer step
        first = batch_index % k == 0
        steps = (batch_index + 1) % k == 0 or batch_index + 1 == n
        images, targets, sample_indices = fabric.to_device((images, targets, sample_indices))
        if first:
            run.optimizer.zero_grad(set_to_none=True)
            step_sums = {}
        with fabric.no_backward_sync(run.model, enabled=not steps):
            losses = run.model(images, targets, sample_indices)  # float32: total + terms
            watch.update(losses, starts_step=first)
            fabric.backward(losses["total"] / group if group > 1 else losses["total"])
        num_batches += 1
        for name, value in losses.items():
            term_sums[name] = term_sums.get(name, 0.0) + value.detach()
            step_sums[name] = step_sums.get(name, 0.0) + value.detach()
        images_seen += images.shape[0] * run.world
        bar.update(images.shape[0] * run.world)
        if steps:
            step_losses = {name: value / group for name, value in step_sums.items()}
            optimizer_step(run, epoch, step_losses, watch, bar)
    bar.close()
    watch.check(run, epoch)
    seconds = time.perf_counter() - started
    # Prototypes from this epoch's positives, summed over all ranks (spec B3).
    run.criterion.end_epoch(run.all_reduce_sum)

    record: dict[str, Any] = {"epoch": epoch + 1, "step": run.step}
    for name, total in term_sums.items():
        summed = run.all_reduce_sum(total.reshape(1))
        record[f"loss/{name}"] = float(summed.item()) / (num_batches * run.world)
    record["lr"] = float(run.scheduler.get_last_lr()[0])
    record["img_per_s"] = images_seen / max(seconds, 1e-9)
    record["epoch_seconds"] = seconds
    return record


def optimizer_step(
    run: Run, epoch: int, step_losses: dict[str, torch.Tensor], watch: FiniteWatch, bar: tqdm
) -> None:
    """The end of an optimizer step's group of batches: clip, step the optimizer and the
    schedule, update the EMA and, every ``train.log_every`` steps, check the losses are
    finite and log the step's mean losses (console, progress bar, loggers)."""
    o, t, fabric = run.cfg.optim, run.cfg.train, run.fabric
    if o.grad_clip is not None:
        fabric.clip_gradients(run.model, run.optimizer, max_norm=o.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    if run.ema is not None:
        run.ema.update(run.net, step=run.step)
    if run.step % t.log_every:
        return
    watch.check(run, epoch)
    loss, lr = step_losses["total"].item(), run.scheduler.get_last_lr()[0]
    bar.set_postfix(loss=f"{loss:.4f}")
    if run.rank == 0:
        tqdm.write(f"step {run.step}  epoch {epoch + 1}/{o.epochs}  loss {loss:.4f}  lr {lr:.3g}")
    run.folder.log_scalars(
        {f"step/loss_{name}": v.item() for name, v in step_losses.items()} | {"step/lr": lr},
        run.step,
    )


def step_on_metric(run: Run, record: dict[str, Any]) -> None:
    """A schedule stepped per evaluation (``optim.schedule=plateau``) steps on the val value
    of ``train.select_metric`` (the same on every rank: the record is broadcast)."""
    step = getattr(run.scheduler, "step_on_metric", None)
    if step is None:
        return
    name = run.cfg.train.select_metric
    line = step(record.get(name), name)
    if line is not None and run.rank == 0:
        tqdm.write(line)


def evaluate(run: Run) -> dict[str, Any]:
    """Val and test metrics of the regular and the EMA model, from one pass over each
    split's images; on every rank (rank 0 computes, then broadcasts)."""
    started = time.perf_counter()
    models = {"": run.net} | ({"_ema": run.ema.module} if run.ema is not None else {})
    record: dict[str, Any] = {}
    for split, loader in run.eval_loaders.items():
        keep = "" if split == "test" else None  # the regular model's test projections (NC)
        predictions = predict_models(
            models,
            loader,
            run.fabric,
            keep,
            run.cfg.train.limit_eval_batches,
            channels_last=uses_channels_last(run.cfg, run.fabric.device),
        )
        if run.rank != 0:
            continue
        for suffix, prediction in predictions.items():
            scored = score_predictions(
                prediction, run.groups, run.class_names, scores=run.cfg.train.eval_scores
            )
            for g, value in scored["map"].items():
                record[f"{split}{suffix}/map_{g}"] = value
            record[f"{split}{suffix}/CF1"] = scored["f1"]["CF1"]
            record[f"{split}{suffix}/OF1"] = scored["f1"]["OF1"]
            if suffix == keep:
                run.last_ap = scored["ap"]
                for k, v in collapse_diagnostics(prediction, run.net).items():
                    record[f"{split}/{k}"] = v
    record["eval_seconds"] = time.perf_counter() - started
    return run.fabric.broadcast(record, src=0)


def select_and_save(run: Run, epoch: int, record: dict[str, Any]) -> None:
    """The selection (on every rank), then (rank 0) the checkpoints, selection.json and the
    epoch's metrics line.

    With a val split, the regular and the EMA model compete on the metric of
    ``train.select_metric`` and a strictly better (epoch, variant) is saved as best.ckpt;
    without one (or before any val score), the selection is the last saved epoch.

    Crash consistency (a kill at any point, then ``--resume``, gives the files of an
    uninterrupted run): the record joins the history, which every checkpoint carries;
    ``last.ckpt`` is written first and is the commit point; an epoch that improves the
    selection always writes it, and then the same state to ``best.ckpt``; last the metrics
    files are rewritten whole from the history. Resuming from ``last.ckpt`` rebuilds the
    metrics files from its history and, if the kill fell between the two checkpoints,
    restores ``best.ckpt`` from ``last.ckpt`` (``resume.restore_best``).
    """
    t = run.cfg.train
    has_ema = run.ema is not None
    improved = False
    if "val" in run.eval_loaders:
        candidate = sel.on_val(record, t.select_metric, has_ema)
        if sel.improves(candidate, run.selection):
            run.best = {**jsonable(record), "select_metric": t.select_metric}
            run.selection, improved = candidate, True
    last_epoch = epoch + 1 == run.cfg.optim.epochs
    save_last = last_epoch or improved or (epoch + 1) % t.checkpoint_every == 0
    if t.checkpoint_history and (epoch + 1) % t.checkpoint_history == 0:
        save_last = True
    if save_last and (run.selection is None or run.selection["rule"] == "last"):
        reason = None
        if "val" in run.eval_loaders and any(
            k.startswith("val/") for r in [*run.history, record] for k in r
        ):
            reason = f"{t.select_metric} was never defined on val (NaN at every evaluation)"
        run.selection = sel.on_last(epoch + 1, t.select_metric, has_ema, reason)
    # -- records and checkpoints
    record = jsonable(record)  # as metrics.jsonl holds it
    run.history.append(record)
    if run.rank != 0:
        return
    # TensorBoard before the commit point, flushed: what a checkpoint covers is on disk, and
    # what a kill replays is purged on resume (RunFolder.resume_step).
    run.folder.log_scalars({k: v for k, v in record.items() if k != "epoch"}, run.step)
    if save_last:
        run.folder.flush_tensorboard()
        state = run.checkpoint_state(epoch + 1, record)
        history = t.checkpoint_history
        if history and (epoch + 1) % history == 0:  # before the commit point: a kill replays it
            save_checkpoint(state, run.folder.checkpoints / f"epoch-{epoch + 1:04d}.ckpt")
        save_checkpoint(state, run.folder.checkpoints / LAST)  # the commit point
        if improved:
            save_checkpoint(state, run.folder.checkpoints / BEST)
        if run.selection is not None:
            sel.write_selection(run.folder.path, run.selection)
    run.folder.write_records(run.history)
    line = epoch_line(record, run.cfg.optim.epochs)
    if t.limit_eval_batches is not None and "test/map_total" in record:
        line += "  [mAP PARTIAL: train.limit_eval_batches]"
    tqdm.write(line)


def finish(run: Run, record: dict[str, Any]) -> TrainResult:
    """Per-class AP and plots (rank 0), and the run's result."""
    folder = run.folder
    # The history covers the whole run (also across a resume), on every rank.
    history = list(run.history)
    best_on_test = max(
        (r for r in history if r.get("test/map_total") is not None),
        key=lambda r: r["test/map_total"],
        default=None,
    )
    try:
        if run.rank == 0 and history:
            if run.last_ap is not None:
                folder.write_per_class(
                    run.class_names, run.class_freq, run.groups, {"test_ap": run.last_ap}
                )
            if run.cfg.train.plots:
                warmup = getattr(run.criterion, "warmup_epochs", None)
                folder.write_plots(
                    run.class_names,
                    run.class_freq,
                    run.groups,
                    run.last_ap,
                    warmup_epochs=warmup if isinstance(warmup, int) else None,
                    select_metric=run.cfg.train.select_metric,
                )
    finally:
        folder.close()
    return TrainResult(
        run_dir=folder.path,
        last=history[-1] if history else {},
        best=run.best,
        best_on_test=best_on_test,
        history=history,
        global_rank=run.rank,
        selection=run.selection,
        ema_decay=run.cfg.train.ema_decay,
        ema_warmup=run.cfg.train.ema_warmup,
        limit_eval_batches=run.cfg.train.limit_eval_batches,
        eval_scores=run.cfg.train.eval_scores,
    )
