"""The training loop, on Lightning Fabric; read it top to bottom.

``train(cfg)`` builds Fabric (launching, DDP, precision), then per process: data and
samplers -> method (model, criterion, sampler kind) -> Adam + OneCycle -> EMA -> epochs of
(forward, loss dict, backward, step, schedule, EMA) -> prototype update over all ranks ->
evaluation of the regular and EMA models on val and test -> metrics, checkpoints, plots.

Reproducibility: all RNGs are reseeded at the start of every epoch from (seed, epoch, rank)
and the samplers are seeded per (seed, epoch), so a run resumed from an epoch-end checkpoint
continues exactly (model, EMA, optimizer, scheduler, criterion buffers, step and epoch are
restored from the checkpoint).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mlcnc.config import (
    Config,
    ConfigError,
    config_diff,
    config_from_dict,
    config_to_dict,
    save_config,
)
from mlcnc.data import build_dataset, build_sampler, build_splits
from mlcnc.data import transforms as data_transforms
from mlcnc.data.longtail import class_groups
from mlcnc.engine.checkpoint import (
    BEST,
    CHECKPOINT_DIR,
    LAST,
    load_checkpoint,
    plain_state_dict,
    resolve_checkpoint,
    save_checkpoint,
)
from mlcnc.engine.evaluation import (
    collapse_diagnostics,
    eval_loader,
    format_map_table,
    predict,
    score_predictions,
)
from mlcnc.engine.optim import build_optimizer, build_scheduler
from mlcnc.engine.run_folder import GROUPS, RunFolder, default_run_dir
from mlcnc.losses.base import Criterion
from mlcnc.methods import build_method

# Keys that may differ when resuming: they change where or how verbosely a run goes, not
# what it computes.
RESUME_IGNORED_KEYS = (
    "train.output",
    "train.progress",
    "train.plots",
    "train.log_every",
    "train.checkpoint_every",
    "data.num_workers",
)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message gives the step, the terms and the last
    good checkpoint."""


@dataclass
class TrainResult:
    """What a finished run gives back (on every rank; only rank 0 wrote the files).

    last:  metrics of the last epoch (flat dict as in metrics.jsonl).
    best:  the record of the best epoch on val (None without a val split).
    best_on_test: the best epoch by test mAP (regular model) -- optimistic, chosen on test.
    """

    run_dir: Path
    last: dict[str, Any]
    best: dict[str, Any] | None = None
    best_on_test: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    global_rank: int = 0

    def table(self) -> str:
        """Total / Head / Medium / Tail test mAP: last epoch (regular and EMA); the epoch
        best on val; the best epoch on test, labelled optimistic (rows repeating the last
        epoch become a note)."""
        rows, notes = [], []
        epoch = self.last.get("epoch")
        variants = (("test", "regular"), ("test_ema", "EMA"))
        for key, label in variants:
            if f"{key}/map_total" in self.last:
                rows.append((f"last epoch {epoch}, {label}", _groups(self.last, key)))
        if self.best is not None and self.best.get("epoch") == epoch:
            notes.append(f"best on val ({self.best.get('select_metric', 'val')}): the last epoch")
        elif self.best is not None:
            for key, label in variants:
                if f"{key}/map_total" in self.best:
                    rows.append(
                        (
                            f"best on val (epoch {self.best['epoch']}), {label}",
                            _groups(self.best, key),
                        )
                    )
        if self.best_on_test is not None and self.best_on_test.get("epoch") == epoch:
            notes.append("best epoch on test: the last epoch")
        elif self.best_on_test is not None:
            rows.append(
                (
                    f"best epoch ON TEST ({self.best_on_test['epoch']}), regular [optimistic]",
                    _groups(self.best_on_test, "test"),
                )
            )
        return "\n".join([format_map_table(rows, title="Test mAP (%)"), *notes])


def _groups(record: dict[str, Any], key: str) -> dict[str, float]:
    return {g: _num(record.get(f"{key}/map_{g}")) for g in GROUPS}


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


# --------------------------------------------------------------------------------------
# entry point


class ModelWithLoss(nn.Module):
    """What Fabric / DDP wrap for training: ``forward(images, targets)`` returns the loss dict.

    DDP then finds the parameters that a loss leaves out (MLC-NC's projections and
    temperature during the paper warm-up) by following the graph back from the loss, not from
    the model outputs. The criterion runs in float32 (autocast off) and is kept out of the
    module tree: its buffers (prototype sums) are per-rank state that DDP must not broadcast.
    """

    def __init__(self, model: nn.Module, criterion: Criterion) -> None:
        super().__init__()
        self.model = model
        self._criterion = (criterion,)  # a tuple hides it from the module tree

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        output = self.model(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self._criterion[0](output, targets)


def make_fabric(cfg: Config) -> Fabric:
    """Fabric from ``train:``; ``precision=auto`` is bf16-mixed / 16-mixed on CUDA, 32 on CPU."""
    t = cfg.train
    precision = t.precision
    if precision == "auto":
        cuda = torch.cuda.is_available() and t.accelerator in ("auto", "cuda", "gpu")
        if cuda:
            precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            precision = "32-true"
    strategy: Any = t.strategy
    several = t.devices not in (1, "1") or t.num_nodes > 1
    if t.strategy == "ddp" or (t.strategy == "auto" and several):
        from lightning.fabric.strategies import DDPStrategy

        # MLC-NC's paper warm-up leaves the projections and the temperature out of the loss,
        # so DDP must look for parameters without gradients.
        strategy = DDPStrategy(find_unused_parameters=t.find_unused_parameters)
    return Fabric(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=precision,
    )


def train(
    cfg: Config | None,
    *,
    config_name: str = "custom",
    resume: str | Path | None = None,
    force: bool = False,
) -> TrainResult:
    """Train ``cfg`` (or continue ``resume``, a run folder or checkpoint) and return the result.

    With ``resume`` and ``cfg=None`` the checkpoint's config is used; a different ``cfg`` is
    refused (ConfigError naming the differing keys) unless ``force``.
    """
    resume_state = None
    if resume is not None:
        resume_path = resolve_checkpoint(resume, LAST)
        resume_state = load_checkpoint(resume_path)
        saved = config_from_dict(resume_state["config"])
        if cfg is None:
            cfg = saved
        else:
            differing = [
                k
                for k in config_diff(config_to_dict(saved), config_to_dict(cfg))
                if k not in RESUME_IGNORED_KEYS
            ]
            if differing and not force:
                raise ConfigError(
                    f"refusing to resume {resume_path} with a different config "
                    f"(differs in: {', '.join(differing)}); pass --force to resume anyway"
                )
        if cfg.train.output in (None, saved.train.output):
            # Continue in the folder that holds the checkpoint, unless told otherwise.
            folder = resume_path.parent
            run_dir = folder.parent if folder.name == CHECKPOINT_DIR else folder
            cfg.train.output = str(run_dir)
    if cfg is None:
        raise ValueError("train() needs a config or a run to resume")
    fabric = make_fabric(cfg)
    return fabric.launch(_run, cfg, config_name, resume_state)


# --------------------------------------------------------------------------------------
# one process


def _seed_all(seed: int, epoch: int, rank: int) -> None:
    """Seed python, numpy and torch for (seed, epoch, rank): augmentation and dropout differ
    per rank and per epoch, and a resumed epoch replays exactly."""
    value = (seed * 1_000_003 + epoch * 10_007 + rank) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _run(fabric: Fabric, cfg: Config, config_name: str, resume_state: dict | None) -> TrainResult:
    t, o = cfg.train, cfg.optim
    world, rank = fabric.world_size, fabric.global_rank
    if t.num_threads is not None:
        torch.set_num_threads(t.num_threads)
    if o.batch_size % world:
        raise ConfigError(
            f"optim.batch_size={o.batch_size} (the global batch) must divide by the "
            f"{world} processes"
        )
    batch_per_device = o.batch_size // world

    # Run folder (rank 0 picks the name; a timestamp could differ between processes).
    run_dir = Path(t.output) if t.output else default_run_dir(config_name)
    run_dir = Path(fabric.broadcast(str(run_dir), src=0))
    folder = RunFolder(run_dir, enabled=rank == 0)
    if rank == 0:
        save_config(cfg, run_dir / "config.yaml")

    # Data. Rank 0 first: the synthetic benchmark is generated on first use.
    fabric.seed_everything(t.seed, verbose=False)
    with fabric.rank_zero_first():
        splits = build_splits(cfg.data)
    train_split = splits["train"]
    class_names = list(train_split.class_names)
    class_freq = train_split.labels.sum(axis=0).astype(np.int64)
    groups = class_groups(class_freq, head=cfg.data.head_threshold, tail=cfg.data.tail_threshold)
    num_classes = len(class_names)

    # Method: model, criterion, sampler kind. Same init on every rank (seeded above).
    method = build_method(cfg.method, num_classes, class_freq, num_samples=len(train_split.labels))
    net, criterion = method.model, method.criterion
    if resume_state is not None:
        net.load_state_dict(resume_state["model"])
        criterion.load_state_dict(resume_state["criterion"])

    recipe = cfg.method.recipe
    image_size = cfg.data.image_size
    train_set = build_dataset(
        train_split,
        data_transforms.build_transforms(recipe, image_size, train=True),
        cfg.data.skip_bad_images,
    )
    sampler = build_sampler(
        method.sampler, train_split.labels, cfg.data, seed=t.seed, rank=rank, world_size=world
    )
    pin = fabric.device.type == "cuda"
    train_loader = DataLoader(
        train_set,
        batch_size=batch_per_device,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=pin,
        # A last batch of one sample breaks BatchNorm in training mode: drop only that.
        drop_last=len(sampler) % batch_per_device == 1,
    )
    eval_transform = data_transforms.build_transforms(
        recipe, image_size, train=False, eval_flip=cfg.data.eval_flip
    )
    eval_batch = t.eval_batch_size or batch_per_device
    eval_loaders = {
        name: eval_loader(
            build_dataset(splits[name], eval_transform, cfg.data.skip_bad_images),
            eval_batch,
            cfg.data.num_workers,
            rank,
            world,
            pin,
        )
        for name in ("val", "test")
        if name in splits
    }
    steps_per_epoch = len(train_loader)
    if t.limit_train_batches is not None:
        steps_per_epoch = min(steps_per_epoch, t.limit_train_batches)

    # Optimisation: Adam (coupled L2 groups) + OneCycle per step; EMA of the weights.
    optimizer = build_optimizer(net, o)
    scheduler = build_scheduler(optimizer, o, steps_per_epoch)
    model, fabric_optimizer = fabric.setup(ModelWithLoss(net, criterion), optimizer)
    criterion.to(fabric.device)
    # The loader is not passed through fabric.setup_dataloaders: its wrapper would call
    # sampler.set_epoch with its own count of epochs in this process, which breaks resume.
    ema = None
    if t.ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(net, decay=t.ema_decay, use_warmup=t.ema_warmup)
    start_epoch, step = 0, 0
    best = None
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if ema is not None and resume_state.get("ema") is not None:
            ema.module.load_state_dict(resume_state["ema"])
        start_epoch, step = int(resume_state["epoch"]), int(resume_state["step"])
        best = resume_state.get("best")
        folder.load_records()
        folder.truncate_records(start_epoch)

    def checkpoint_state(epoch: int, record: dict[str, Any]) -> dict[str, Any]:
        """Tensors and plain types only: ``torch.load(weights_only=True)`` reads it."""
        return {
            "model": plain_state_dict(net),
            "ema": plain_state_dict(ema.module) if ema is not None else None,
            "criterion": plain_state_dict(criterion),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,  # epochs completed; training continues at this (0-based) epoch
            "step": step,
            "sampler": {"kind": method.sampler, "seed": t.seed, "epoch": epoch},
            "config": config_to_dict(cfg),
            "class_names": class_names,
            "class_freq": class_freq.tolist(),
            "num_train_samples": len(train_split.labels),
            "metrics": record,
            "best": best,
        }

    def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
        return fabric.all_reduce(tensor, reduce_op="sum") if world > 1 else tensor

    show = rank == 0 and t.progress
    epochs_bar = tqdm(
        total=o.epochs, initial=start_epoch, desc="epochs", unit="epoch", disable=not show
    )
    last_ap: np.ndarray | None = None
    record: dict[str, Any] = {}
    for epoch in range(start_epoch, o.epochs):
        _seed_all(t.seed, epoch, rank)
        sampler.set_epoch(epoch)
        criterion.set_epoch(epoch)
        model.train()
        criterion.train()

        # ---- one training epoch --------------------------------------------------------
        term_sums: dict[str, torch.Tensor] = {}
        images_seen = 0
        started = time.perf_counter()
        bar = tqdm(
            total=steps_per_epoch * o.batch_size,
            desc=f"epoch {epoch + 1}/{o.epochs}",
            unit="img",
            leave=False,
            disable=not show,
        )
        for batch_index, (images, targets, _) in enumerate(train_loader):
            if batch_index >= steps_per_epoch:
                break
            images, targets = fabric.to_device((images, targets))
            losses = model(images, targets)  # float32 dict: total + every term
            _check_finite(losses, step + 1, epoch, fabric, folder)
            fabric_optimizer.zero_grad(set_to_none=True)
            fabric.backward(losses["total"])
            if o.grad_clip is not None:
                fabric.clip_gradients(model, fabric_optimizer, max_norm=o.grad_clip)
            fabric_optimizer.step()
            scheduler.step()
            step += 1
            if ema is not None:
                ema.update(net, step=step)
            for name, value in losses.items():
                term_sums[name] = term_sums.get(name, 0.0) + value.detach()
            images_seen += images.shape[0] * world
            bar.update(images.shape[0] * world)
            if step % t.log_every == 0:
                bar.set_postfix(loss=f"{losses['total'].item():.4f}")
                folder.log_scalars(
                    {f"step/loss_{k}": v.item() for k, v in losses.items()}
                    | {"step/lr": scheduler.get_last_lr()[0]},
                    step,
                )
        bar.close()
        seconds = time.perf_counter() - started
        # Prototypes from this epoch's positives, summed over all ranks (spec B3).
        criterion.end_epoch(all_reduce_sum)

        num_batches = min(batch_index + 1, steps_per_epoch) if steps_per_epoch else 0
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step}
        for name, total in term_sums.items():
            record[f"loss/{name}"] = float(all_reduce_sum(total.reshape(1)).item()) / (
                num_batches * world
            )
        record["lr"] = float(scheduler.get_last_lr()[0])
        record["img_per_s"] = images_seen / max(seconds, 1e-9)
        record["epoch_seconds"] = seconds

        # ---- evaluation: regular and EMA models, val and test --------------------------
        last_epoch = epoch + 1 == o.epochs
        if last_epoch or (epoch + 1) % t.eval_every == 0:
            eval_started = time.perf_counter()
            for split, loader in eval_loaders.items():
                variants = [("", net)] + ([("_ema", ema.module)] if ema is not None else [])
                for suffix, candidate in variants:
                    keep = suffix == "" and split == "test"
                    predictions = predict(candidate, loader, fabric, keep, t.limit_eval_batches)
                    if rank != 0:
                        continue
                    scored = score_predictions(predictions, groups, class_names)
                    for g, value in scored["map"].items():
                        record[f"{split}{suffix}/map_{g}"] = value
                    record[f"{split}{suffix}/CF1"] = scored["f1"]["CF1"]
                    record[f"{split}{suffix}/OF1"] = scored["f1"]["OF1"]
                    if keep:
                        last_ap = scored["ap"]
                        for k, v in collapse_diagnostics(predictions, net).items():
                            record[f"{split}/{k}"] = v
            record["eval_seconds"] = time.perf_counter() - eval_started
            record = fabric.broadcast(record, src=0)

        # ---- selection, checkpoints, logs ----------------------------------------------
        improved = False
        if "val" in eval_loaders and t.select_metric in record:
            value = _num(record[t.select_metric])
            if best is None or value > _num(best.get(t.select_metric)):
                best, improved = {**record, "select_metric": t.select_metric}, True
        if rank == 0:
            state = None
            if last_epoch or (epoch + 1) % t.checkpoint_every == 0:
                state = checkpoint_state(epoch + 1, record)
                save_checkpoint(state, folder.checkpoints / LAST)
            if improved:
                state = state or checkpoint_state(epoch + 1, record)
                save_checkpoint(state, folder.checkpoints / BEST)
            folder.log_epoch(record, step)
            tqdm.write(_epoch_line(record, o.epochs))
        epochs_bar.update(1)
        fabric.barrier()
    epochs_bar.close()

    # On rank 0 the history covers the whole run (also across a resume).
    history = list(folder.records) if rank == 0 else [record]
    best_on_test = max(
        (r for r in history if r.get("test/map_total") is not None),
        key=lambda r: r["test/map_total"],
        default=None,
    )
    if rank == 0 and history:
        if last_ap is not None:
            folder.write_per_class(class_names, class_freq, groups, {"test_ap": last_ap})
        if t.plots:
            folder.write_plots(class_names, class_freq, groups, last_ap)
    folder.close()
    return TrainResult(
        run_dir=run_dir,
        last=history[-1] if history else {},
        best=best,
        best_on_test=best_on_test,
        history=history,
        global_rank=rank,
    )


def _check_finite(
    losses: dict[str, torch.Tensor], step: int, epoch: int, fabric: Fabric, folder: RunFolder
) -> None:
    """Stop on a NaN / inf loss on any rank, naming the step and every term."""
    bad = torch.tensor(
        0.0 if torch.isfinite(losses["total"]).item() else 1.0, device=losses["total"].device
    )
    if fabric.world_size > 1:
        bad = fabric.all_reduce(bad, reduce_op="sum")
    if bad.item() == 0:
        return
    terms = ", ".join(f"{k}={v.item():.6g}" for k, v in losses.items())
    last = folder.checkpoints / LAST
    kept = (
        f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was saved yet"
    )
    raise NonFiniteLossError(
        f"non-finite loss at step {step} (epoch {epoch + 1}) on at least one rank: {terms}; "
        f"stopping; {kept}"
    )


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record.get('loss/total', math.nan):.4f}"]
    for key, label in (("val/map_total", "val mAP"), ("test/map_total", "test mAP")):
        if key in record:
            ema_key = key.replace("/", "_ema/")
            ema = f" (EMA {_num(record[ema_key]):.2f})" if ema_key in record else ""
            parts.append(f"{label} {_num(record[key]):.2f}{ema}")
    parts.append(f"{record['img_per_s']:.1f} img/s")
    return "  ".join(parts)
