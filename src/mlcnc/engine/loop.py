"""The training loop, on Lightning Fabric; read it top to bottom.

``train(cfg)`` builds Fabric (launching, DDP, precision), then each process runs ``_run``,
which reads in four parts:

1. ``_setup``: data and samplers -> method (model, criterion, sampler kind) -> optimiser and
   schedule -> EMA -> state restored from a checkpoint when resuming;
2. ``_train_epoch``: forward, loss dict, backward, step, schedule, EMA; prototype update
   over all ranks at the end;
3. ``_evaluate``: the regular and the EMA model scored from one pass over each split (each
   image decoded once);
4. ``_select_and_save``: the selection (see ``mlcnc.engine.selection``: the best epoch and
   variant, regular or EMA, on val; the last epoch without val), checkpoints,
   selection.json, the metrics line.

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

Records survive any kill (see ``_select_and_save``): every checkpoint carries the epoch
history, ``last.ckpt`` is the commit point, ``best.ckpt`` follows it, and the metrics files
are rebuilt from the history, so a run folder plus ``--resume`` gives exactly the records
and checkpoints of an uninterrupted run. A folder holding a run is never reused silently,
and ``--resume`` refuses data that differ from the checkpoint's (``_check_resume_data``).

Reproducibility: all RNGs are reseeded at the start of every epoch from (seed, epoch, rank)
and the samplers are seeded per (seed, epoch), so a run resumed from an epoch-end checkpoint
continues exactly (model, EMA, optimizer, scheduler, criterion buffers, step and epoch are
restored from the checkpoint).
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import os
import random
import shutil
import sys
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
    RUNTIME_ONLY_KEYS,
    Config,
    ConfigError,
    OptimConfig,
    config_diff,
    config_from_dict,
    config_to_dict,
    dump_config,
    resolve_config,
)
from mlcnc.data import DataError, build_dataset, build_sampler, build_splits
from mlcnc.data import transforms as data_transforms
from mlcnc.data.check import write_problems
from mlcnc.data.longtail import class_groups
from mlcnc.data.paired import PairedDataset
from mlcnc.engine import selection as sel
from mlcnc.engine.checkpoint import (
    BEST,
    CHECKPOINT_DIR,
    LAST,
    MissingCheckpointError,
    checkpoint_run_dir,
    compare_data,
    data_record,
    load_checkpoint,
    plain_state_dict,
    save_checkpoint,
    temporary_name,
)
from mlcnc.engine.data_check import DROPPED_FILE, check_training_split, checked_splits
from mlcnc.engine.evaluation import (
    collapse_diagnostics,
    eval_loader,
    format_map_table,
    inference_precision,
    predict_models,
    score_predictions,
)
from mlcnc.engine.optim import build_optimizer, build_scheduler, build_scheduler_at
from mlcnc.engine.run_folder import (
    GROUPS,
    RunFolder,
    RunFolderError,
    default_run_dir,
    jsonable_record,
    refuse_message,
    run_contents,
)
from mlcnc.losses.base import Criterion
from mlcnc.methods import Method, build_method


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message gives the step, the terms and the last
    good checkpoint."""


@dataclass
class TrainResult:
    """What a finished run gives back (on every rank; only rank 0 wrote the files).

    last:  metrics of the last epoch (flat dict as in metrics.jsonl).
    best:  the record of the best epoch on val (None without a val split).
    best_on_test: the best epoch by test mAP (regular model) -- optimistic, chosen on test.
    selection: the selected model (checkpoint, variant, epoch, metric; see
           ``mlcnc.engine.selection``), as in RUN/selection.json.
    """

    run_dir: Path
    last: dict[str, Any]
    best: dict[str, Any] | None = None
    best_on_test: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    global_rank: int = 0
    selection: dict[str, Any] | None = None

    def table(self) -> str:
        """Total / Head / Medium / Tail test mAP: last epoch (regular and EMA); the epoch
        best on val; the best epoch on test, labelled optimistic (rows repeating the last
        epoch become a note); the selected model's row is marked and a last line names it."""
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
        chosen = self.selection
        if chosen is not None:
            label = "EMA" if chosen["variant"] == "ema" else "regular"
            epoch_of = {"val": (self.best or {}).get("epoch"), "last": epoch}[chosen["rule"]]
            prefix = "last epoch" if epoch_of == epoch else "best on val"
            rows = [
                (f"{name} [selected]", values)
                if name.startswith(prefix) and name.endswith(f", {label}")
                else (name, values)
                for name, values in rows
            ]
            notes.append(
                f"selected model: {chosen['checkpoint']}, {sel.WEIGHTS[chosen['variant']]} "
                f"({sel.describe(chosen)}); evaluate / predict / export / inspect of the run "
                "folder use it"
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

    def __init__(self, model: nn.Module, criterion: Criterion, channels_last: bool = False) -> None:
        super().__init__()
        self.model = model
        self._criterion = (criterion,)  # a tuple hides it from the module tree
        self.channels_last = channels_last

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        output = self.model(images)
        # Whatever the precision (bf16 autocast, bf16 / float64 weights), the criterion and
        # its float32 buffers see float32 tensors, and tensors it creates are float32.
        output = dataclasses.replace(
            output,
            **{
                f.name: value.float()
                for f in dataclasses.fields(output)
                if isinstance(value := getattr(output, f.name), torch.Tensor)
                and value.is_floating_point()
            },
        )
        with inference_precision(images.device, torch.float32):
            return self._criterion[0](output, targets.float())


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


@dataclass
class _Resume:
    """Where and from what a run continues (built by ``train`` in the launching process)."""

    mode: str  # "new", "overwrite" or "resume"
    state: dict[str, Any] | None = None  # the checkpoint (None: a new run, or a restart)
    path: Path | None = None  # the checkpoint file
    source_dir: Path | None = None  # the run folder the checkpoint belongs to
    run_dir: Path | None = None  # where the run continues (None: cfg.train.output)
    force: bool = False
    stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the checkpoint when read


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
    plan = _Resume("overwrite" if overwrite else "new", force=force)
    if resume is not None:
        if overwrite:
            raise RunFolderError(
                "--resume continues a run and --overwrite replaces one: give only one of them"
            )
        cfg, plan = _plan_resume(cfg, Path(resume), force)
    if cfg is None:
        raise ValueError("train() needs a config or a run to resume")
    cfg = resolve_config(cfg)
    fabric = make_fabric(cfg)
    return fabric.launch(_run, cfg, config_name, plan)


def _plan_resume(cfg: Config | None, resume: Path, force: bool) -> tuple[Config, _Resume]:
    """The config and the folder a resumed run continues with, and its checkpoint."""
    state, ckpt, run_dir = None, None, None
    if resume.is_dir():
        run_dir = resume
        if (resume / CHECKPOINT_DIR / LAST).is_file():
            ckpt = resume / CHECKPOINT_DIR / LAST
        elif not (resume / "config.yaml").is_file():
            raise MissingCheckpointError(
                f"run folder {resume} has no {CHECKPOINT_DIR}/{LAST} and no config.yaml: "
                "there is no run to resume there"
            )
    elif resume.is_file():
        ckpt, run_dir = resume, checkpoint_run_dir(resume)
    else:
        raise MissingCheckpointError(f"{resume} is neither a run folder nor a checkpoint file")
    if ckpt is not None:
        state = load_checkpoint(ckpt)
        saved = config_from_dict(state["config"])
        stat = ckpt.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
    else:  # killed before its first checkpoint: start the run over from its own config
        import yaml

        saved = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
        stamp = None
    if cfg is None:
        cfg = saved
    else:
        differing = [
            k
            for k in config_diff(config_to_dict(saved), config_to_dict(cfg))
            if k not in RUNTIME_ONLY_KEYS
        ]
        if differing and not force:
            raise ConfigError(
                f"refusing to resume {ckpt or run_dir} with a different config "
                f"(differs in: {', '.join(differing)}); pass --force to resume anyway"
            )
    own = {_same_path(p) for p in (run_dir, saved.train.output) if p is not None}
    if cfg.train.output is not None and _same_path(cfg.train.output) not in own:
        mode = "new"  # continue the checkpoint in another, new run folder
        if ckpt is None:
            raise RunFolderError(
                f"run folder {run_dir} has no checkpoint yet: nothing to continue in "
                f"{cfg.train.output}; start a new run there instead"
            )
    elif run_dir is None:
        raise RunFolderError(
            f"{resume} is a checkpoint outside a run folder (not in RUN/{CHECKPOINT_DIR}/), "
            "so there is no run to continue; pass --output DIR to continue it in a new run "
            "folder"
        )
    else:
        # The config keeps its train.output (the records stay those of the run as it was
        # started); the folder it continues in is the checkpoint's own.
        mode = "resume"
        target = run_dir
    if mode == "new":
        target = Path(cfg.train.output)
    source = run_dir if ckpt is not None else None
    return cfg, _Resume(
        mode, state=state, path=ckpt, source_dir=source, run_dir=target, force=force, stamp=stamp
    )


def _same_path(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


# --------------------------------------------------------------------------------------
# one process


def _seed_all(seed: int, epoch: int, rank: int) -> None:
    """Seed python, numpy and torch for (seed, epoch, rank): augmentation and dropout differ
    per rank and per epoch, and a resumed epoch replays exactly."""
    value = (seed * 1_000_003 + epoch * 10_007 + rank) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


@dataclass
class _Run:
    """What one process holds during a run (built by ``_setup``)."""

    fabric: Fabric
    cfg: Config
    folder: RunFolder
    class_names: list[str]
    class_freq: np.ndarray
    groups: dict[str, np.ndarray]
    num_train_samples: int
    method: Method
    model: Any  # the Fabric-wrapped ModelWithLoss (DDP under several processes)
    optimizer: Any  # the Fabric-wrapped optimizer
    scheduler: Any
    ema: Any
    sampler: Any
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    steps_per_epoch: int
    data: dict[str, Any] = field(default_factory=dict)  # checkpoint.data_record(train)
    start_epoch: int = 0
    step: int = 0
    best: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None
    last_ap: np.ndarray | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # every epoch's record

    @property
    def net(self) -> nn.Module:
        return self.method.model

    @property
    def criterion(self) -> Criterion:
        return self.method.criterion

    @property
    def rank(self) -> int:
        return self.fabric.global_rank

    @property
    def world(self) -> int:
        return self.fabric.world_size

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.fabric.all_reduce(tensor, reduce_op="sum") if self.world > 1 else tensor

    def checkpoint_state(self, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
        """Tensors and plain types only: ``torch.load(weights_only=True)`` reads it."""
        t = self.cfg.train
        return {
            "model": plain_state_dict(self.net),
            "ema": plain_state_dict(self.ema.module) if self.ema is not None else None,
            "criterion": plain_state_dict(self.criterion),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,  # epochs completed; training continues at this (0-based) epoch
            "step": self.step,
            "sampler": {"kind": self.method.sampler, "seed": t.seed, "epoch": epoch},
            "config": config_to_dict(self.cfg),
            "class_names": self.class_names,
            "class_freq": self.class_freq.tolist(),
            "num_train_samples": self.num_train_samples,
            "metrics": record,
            "best": self.best,
            "selection": self.selection,
            "precision": self.fabric.strategy.precision.precision,
            # Every record so far: the metrics files are rebuilt from it on resume.
            "history": list(self.history),
            "test_ap": None if self.last_ap is None else self.last_ap.tolist(),
            "data": self.data,
        }


def _destroy_process_group() -> None:
    """Tear the process group down while the interpreter is still whole: left to
    interpreter shutdown, gloo's worker threads can abort the process (SIGABRT, exit -6)
    after a run that finished (pytorch/pytorch#179291)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _run(fabric: Fabric, cfg: Config, config_name: str, plan: _Resume) -> TrainResult:
    if fabric.world_size > 1:  # registered once per process, however many runs it makes
        atexit.unregister(_destroy_process_group)
        atexit.register(_destroy_process_group)
    run = _setup(fabric, cfg, config_name, plan)
    o, t = cfg.optim, cfg.train
    show = run.rank == 0 and t.progress
    try:
        epochs_bar = tqdm(
            total=o.epochs, initial=run.start_epoch, desc="epochs", unit="epoch", disable=not show
        )
        record: dict[str, Any] = run.history[-1] if run.history else {}
        for epoch in range(run.start_epoch, o.epochs):
            record = _train_epoch(run, epoch)
            last_epoch = epoch + 1 == o.epochs
            if last_epoch or (epoch + 1) % t.eval_every == 0:
                record |= _evaluate(run)
            _select_and_save(run, epoch, record)
            epochs_bar.update(1)
            fabric.barrier()
        epochs_bar.close()
        return _finish(run, record)
    except BaseException:
        run.folder.close("failed")  # releases the lock: a later --resume may continue
        raise


def _on_rank0(fabric: Fabric, function: Any) -> Any:
    """``function()`` on rank 0 (file system checks and writes), its result or its error
    given to every rank, so that all processes stop together with the same message."""
    result, error = None, None
    if fabric.global_rank == 0:
        try:
            result = function()
        except Exception as caught:
            error = caught
    if fabric.world_size > 1:
        result, error = fabric.broadcast((result, error), src=0)
    if error is not None:
        raise error
    return result


def _note(run_or_rank: Any, message: str) -> None:
    """A line for the user on stderr (rank 0 only)."""
    rank = run_or_rank if isinstance(run_or_rank, int) else run_or_rank.rank
    if rank == 0:
        tqdm.write(f"mlcnc: {message}", file=sys.stderr)


def _check_data(
    cfg: Config, splits: dict[str, Any], progress: bool
) -> tuple[dict[str, Any], list[Any]]:
    """Every image of every split checked (``engine.data_check.checked_splits``) on every
    rank once the splits are read, before the folder is locked or anything is written;
    returns the splits to train on and the rows dropped with ``data.skip_bad_images``
    (written to the run folder once it is opened). Dropped rows change the training split's
    fingerprint, so a resume compares the data as trained."""
    kept, dropped = checked_splits(cfg.data, splits, progress=progress)
    check_training_split(kept["train"])
    return kept, dropped


def _check_resume_data(plan: _Resume, split: Any, rank: int) -> None:
    """Refuse to resume on training data other than the checkpoint's: the class names, their
    order, their number, and the fingerprint of the images and labels (SHA-256 over the
    sorted paths and label names). ``--force`` accepts all but a different number of classes
    (the weights have one column per class), and says what it accepted."""
    assert plan.state is not None
    problems, note = compare_data(plan.state, split, plan.path)
    if note:
        _note(rank, note)
    if not problems:
        return
    counts_differ = len(plan.state["class_names"]) != len(split.class_names)
    differs = "; ".join(problems)
    if counts_differ:
        raise DataError(
            f"refusing to resume {plan.path}: its training data differ in {differs}; a model "
            "for another number of classes cannot continue, even with --force: start a new run"
        )
    if not plan.force:
        raise DataError(
            f"refusing to resume {plan.path}: the training data differ from the checkpoint's "
            f"in {differs}; restore the data, or pass --force to resume on the new data"
        )
    _note(rank, f"--force: resuming {plan.path} although the training data differ in {differs}")


def _check_trainable(cfg: Config, split: Any, steps_per_epoch: int, batch_per_device: int) -> None:
    """A one-line DataError when the training split cannot make one training step."""
    if len(split) < 2 or steps_per_epoch < 1:
        raise DataError(
            f"{split.source}: {len(split)} training image(s) make no training step with "
            f"optim.batch_size={cfg.optim.batch_size} ({batch_per_device} per process; a "
            "batch of one image is dropped, BatchNorm needs two); add training images "
            "(at least 2) or lower optim.batch_size"
        )


def _build_method(cfg: Config, split: Any, class_freq: np.ndarray) -> Method:
    """``build_method`` with a builder's ValueError (options that do not fit the data)
    turned into a one-line user error naming the method and the data."""
    class_names = list(split.class_names)
    try:
        return build_method(
            cfg.method,
            len(class_names),
            class_freq,
            num_samples=len(split.labels),
            data_name=cfg.data.name,
            train_labels=split.labels,
            epochs=cfg.optim.epochs,
        )
    except (ConfigError, DataError):
        raise
    except ValueError as error:
        name = cfg.method.name
        if len(class_names) < 2:
            raise DataError(
                f"{split.source}: {len(class_names)} class ({', '.join(class_names)}); method "
                f"{name} needs at least 2 (its simplex ETF has one direction per class): add "
                f"classes to the dataset, or train a method without an ETF (e.g. "
                f"method.name=erm) [{error}]"
            ) from error
        raise ConfigError(
            f"method {name} cannot be built for the {len(class_names)} classes of "
            f"{split.source}: {error}"
        ) from error


def _set_compute_options(fabric: Fabric, cfg: Config) -> None:
    """Threads and cuDNN kernel choice of this process (``train.num_threads``,
    ``train.cudnn_benchmark``); they change speed, not results (beyond float rounding)."""
    t = cfg.train
    threads = t.num_threads
    if threads == "auto":
        from mlcnc.engine.threads import auto_num_threads, idle_cores

        # The cores other processes leave idle, shared by this machine's processes.
        local_processes = max(1, fabric.world_size // max(1, t.num_nodes))
        cores = max(1, idle_cores() // local_processes)
        threads = auto_num_threads(cfg.data.num_workers, cores, accelerator=fabric.device.type)
    if threads is not None:
        torch.set_num_threads(int(threads))
    if fabric.device.type == "cuda":
        torch.backends.cudnn.benchmark = t.cudnn_benchmark


def uses_channels_last(cfg: Config, device: torch.device) -> bool:
    """Whether images and model use the NHWC memory format (``train.channels_last``)."""
    value = cfg.train.channels_last
    return device.type == "cuda" if value == "auto" else bool(value)


def _setup(fabric: Fabric, cfg: Config, config_name: str, plan: _Resume) -> _Run:
    """Data, method, optimiser, schedule and EMA of one process; restored when resuming.

    Nothing is written until everything that can be checked is checked (folder, data,
    method, schedule): a refused run leaves no trace, and a retry is not a "reuse".
    """
    t, o = cfg.train, cfg.optim
    world, rank = fabric.world_size, fabric.global_rank
    _set_compute_options(fabric, cfg)
    if o.batch_size % world:
        raise ConfigError(
            f"optim.batch_size={o.batch_size} (the global batch) must divide by the "
            f"{world} processes"
        )
    batch_per_device = o.batch_size // world
    if fabric.strategy.precision.precision == "16-true" and o.optimizer.startswith("adam"):
        tiny = torch.finfo(torch.float16).tiny
        if o.eps < tiny:
            # Adam's state lives in float16 too: eps rounds to 0 and updates become NaN.
            raise ConfigError(
                f"train.precision=16-true keeps Adam's state in float16, where optim.eps="
                f"{o.eps:g} is below the smallest normal float16 ({tiny:.1e}) and the updates "
                "become NaN; set optim.eps=1e-4 or use train.precision=16-mixed"
            )
    resume_state = plan.state

    # Run folder (rank 0 picks the name; a timestamp could differ between processes). A new
    # run into a folder that holds one is refused before any data are read.
    if plan.run_dir is not None:
        run_dir = plan.run_dir
    else:
        run_dir = Path(t.output) if t.output else default_run_dir(config_name)
    run_dir = Path(fabric.broadcast(str(run_dir), src=0))
    folder = RunFolder(run_dir, enabled=rank == 0)
    if plan.mode == "new":
        _on_rank0(fabric, lambda: _refuse_a_used_folder(run_dir))

    # Data. Rank 0 first: the synthetic benchmark is generated on first use.
    fabric.seed_everything(t.seed, verbose=False)
    with fabric.rank_zero_first():
        splits = build_splits(cfg.data)
    splits, dropped = _check_data(cfg, splits, progress=rank == 0 and t.progress)
    train_split = splits["train"]
    if resume_state is not None:
        _check_resume_data(plan, train_split, rank)
    class_names = list(train_split.class_names)
    class_freq = train_split.labels.sum(axis=0).astype(np.int64)
    groups = class_groups(class_freq, head=cfg.data.head_threshold, tail=cfg.data.tail_threshold)

    # Method: model, criterion, sampler kind. Same init on every rank (seeded above).
    method = _build_method(cfg, train_split, class_freq)
    if resume_state is not None:
        method.model.load_state_dict(resume_state["model"])
        method.criterion.load_state_dict(resume_state["criterion"])

    eval_transform = data_transforms.transforms_for(cfg.data, cfg.method.recipe, train=False)
    train_transform = data_transforms.transforms_for(cfg.data, cfg.method.recipe, train=True)
    max_pixels = cfg.data.max_image_pixels
    train_set = build_dataset(train_split, train_transform, max_pixels=max_pixels)
    sampler = build_sampler(
        method.sampler, train_split.labels, cfg.data, seed=t.seed, rank=rank, world_size=world
    )
    if method.sampler.startswith("paired"):
        train_set = PairedDataset(train_set)  # (2, 3, H, W) per sample: uniform + re-balanced
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
    eval_batch = t.eval_batch_size or batch_per_device
    eval_loaders = {
        name: eval_loader(
            build_dataset(splits[name], eval_transform, max_pixels=max_pixels),
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
    _check_trainable(cfg, train_split, steps_per_epoch, batch_per_device)

    # Optimisation: Adam (coupled L2 groups) + OneCycle per step; EMA of the weights.
    optimizer = build_optimizer(method.model, o, fused=fabric.device.type == "cuda")
    try:
        scheduler = build_scheduler(optimizer, o, steps_per_epoch)
    except (ValueError, ZeroDivisionError) as error:
        raise ConfigError(
            f"optim.schedule={o.schedule} cannot be built for {o.epochs} epoch(s) of "
            f"{steps_per_epoch} step(s) ({error or type(error).__name__}); train for more "
            "steps (optim.epochs, more images, a smaller optim.batch_size) or use "
            "optim.schedule=constant"
        ) from error
    channels_last = uses_channels_last(cfg, fabric.device)
    if channels_last:
        method.model.to(memory_format=torch.channels_last)
    wrapped = ModelWithLoss(method.model, method.criterion, channels_last=channels_last)
    if t.compile:
        wrapped.model = torch.compile(method.model)  # the criterion stays eager, float32
    model, fabric_optimizer = fabric.setup(wrapped, optimizer)
    method.criterion.to(fabric.device)
    # The loader is not passed through fabric.setup_dataloaders: its wrapper would call
    # sampler.set_epoch with its own count of epochs in this process, which breaks resume.
    ema = None
    if t.ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(method.model, decay=t.ema_decay, use_warmup=t.ema_warmup)
    run = _Run(
        fabric=fabric,
        cfg=cfg,
        folder=folder,
        class_names=class_names,
        class_freq=class_freq,
        groups=groups,
        num_train_samples=len(train_split.labels),
        method=method,
        model=model,
        optimizer=fabric_optimizer,
        scheduler=scheduler,
        ema=ema,
        sampler=sampler,
        train_loader=train_loader,
        eval_loaders=eval_loaders,
        steps_per_epoch=steps_per_epoch,
        data=data_record(train_split),
    )
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        run.start_epoch, run.step = int(resume_state["epoch"]), int(resume_state["step"])
        folder.resume_step = run.step  # TensorBoard hides what the resumed run replays
        if _schedule_changed(resume_state, cfg, steps_per_epoch) and run.start_epoch < o.epochs:
            # Extending (or re-planning) a run: the new plan, positioned at the saved step.
            run.scheduler = build_scheduler_at(optimizer, o, steps_per_epoch, run.step)
        else:
            scheduler.load_state_dict(resume_state["scheduler"])
        if ema is not None and resume_state.get("ema") is not None:
            ema.module.load_state_dict(resume_state["ema"])
        run.best = resume_state.get("best")
        run.selection = resume_state.get("selection")
        if run.selection is None and run.best is not None:  # a checkpoint of an older mlcnc
            run.selection = sel.on_val(run.best, t.select_metric, ema is not None)
        if resume_state.get("test_ap") is not None:
            run.last_ap = np.asarray(resume_state["test_ap"], dtype=np.float64)
        if "history" in resume_state:
            run.history = [r for r in resume_state["history"] if r["epoch"] <= run.start_epoch]

    # Everything checked: take the folder (lock, refuse / clear / continue), then write.
    for line in _on_rank0(fabric, lambda: _open_folder(run, plan)) or []:
        _note(rank, line)
    if dropped and rank == 0:
        path = write_problems(dropped, folder.path / DROPPED_FILE)
        _note(
            rank, f"left out {len(dropped)} unreadable image(s) (data.skip_bad_images); see {path}"
        )
    if plan.state is not None and "history" not in plan.state:
        # A checkpoint from before the history was stored: the records come from the
        # folder's metrics.jsonl (rank 0 reads it; every rank needs them for the result).
        run.history = fabric.broadcast(run.history, src=0) if world > 1 else run.history
    return run


def _schedule_changed(resume_state: dict[str, Any], cfg: Config, steps_per_epoch: int) -> bool:
    """Whether the saved schedule no longer fits the run: ``optim:`` differs from the saved
    config's, or the saved OneCycle's length differs from epochs x steps per epoch."""
    saved = config_from_dict(resume_state.get("config", {}).get("optim", {}), OptimConfig, "optim")
    if config_to_dict(saved) != config_to_dict(cfg.optim):  # both with today's defaults
        return True
    total = resume_state.get("scheduler", {}).get("total_steps")
    return total is not None and int(total) != cfg.optim.planned_epochs * steps_per_epoch


def _refuse_a_used_folder(run_dir: Path) -> None:
    """A new run must not start in a folder holding a run (checked again under the lock)."""
    found = run_contents(run_dir)
    if found:
        raise RunFolderError(refuse_message(run_dir, found))


def _open_folder(run: _Run, plan: _Resume) -> list[str]:
    """Rank 0: lock and prepare the run folder, write the config, make the records and
    best.ckpt agree with the checkpoint resumed from. Returns notes for the user."""
    folder = run.folder
    notes = folder.prepare(plan.mode)
    try:
        if plan.path is not None and plan.stamp is not None:
            stat = plan.path.stat()
            if (stat.st_mtime_ns, stat.st_size) != plan.stamp:
                raise RunFolderError(
                    f"{plan.path} changed while this run was starting (another process wrote "
                    "it); run the command again"
                )
        folder.write_config(dump_config(run.cfg))
        if plan.state is not None:
            if "history" not in plan.state:
                on_disk = [r for r in folder.read_records() if r.get("epoch", 0) <= run.start_epoch]
                run.history = on_disk
                missing = sorted(
                    set(range(1, run.start_epoch + 1)) - {r.get("epoch") for r in on_disk}
                )
                notes.append(
                    f"{plan.path} was written by an older mlcnc without an epoch history: the "
                    "records before it come from metrics.jsonl"
                    + (f", which lacks epoch(s) {missing}" if missing else "")
                )
            notes += _restore_best(run, plan)
        elif plan.mode == "resume":
            notes.append(
                f"{folder.path} has no checkpoint yet (stopped during its first epochs): "
                "starting it over from its config.yaml"
            )
            folder.resume_step = 0  # TensorBoard hides the stopped attempt's events
            best = folder.checkpoints / BEST
            if best.is_file():
                best.unlink()
                notes.append(f"removed {best}, which no checkpoint of the run vouches for")
        if plan.mode == "resume" or plan.state is not None:
            folder.write_records(run.history)
    except BaseException:
        folder.close("failed")
        raise
    return notes


def _checkpoint_epoch(path: Path) -> int | None:
    """The epoch stored in a checkpoint file, or None if it cannot be read."""
    try:
        return int(load_checkpoint(path)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None


def _restore_best(run: _Run, plan: _Resume) -> list[str]:
    """Make best.ckpt hold the epoch the resumed checkpoint records as best.

    The loop writes last.ckpt (the commit point) and then, at an improving epoch, the same
    state to best.ckpt; an improving epoch always writes last.ckpt. A kill between the two
    leaves best.ckpt one improvement behind while last.ckpt, which names its own epoch as
    the best, holds exactly what best.ckpt should: it is copied. Continuing from another
    folder's checkpoint, that folder's best.ckpt is used when it holds the recorded epoch.
    """
    assert plan.state is not None and plan.path is not None
    recorded = (plan.state.get("best") or {}).get("epoch")
    target = run.folder.checkpoints / BEST
    if recorded is None:
        return []
    if target.is_file() and _checkpoint_epoch(target) == recorded:
        return []
    candidates = []
    if plan.source_dir is not None:
        candidates.append(plan.source_dir / CHECKPOINT_DIR / BEST)
    if int(plan.state["epoch"]) == recorded:
        candidates.append(plan.path)
    for candidate in candidates:
        if candidate.is_file() and _checkpoint_epoch(candidate) == recorded:
            if _same_path(candidate) != _same_path(target):
                tmp = temporary_name(target)
                try:
                    shutil.copyfile(candidate, tmp)
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
            return [f"restored {target} (epoch {recorded}) from {candidate}"]
    have = _checkpoint_epoch(target) if target.is_file() else None
    return [
        f"{target} holds epoch {have}, but {plan.path} records epoch {recorded} as the best on "
        "val, and no checkpoint of that epoch is left to restore it from; it is rewritten at "
        "the next improvement"
    ]


class _FiniteWatch:
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

    def update(self, losses: dict[str, torch.Tensor]) -> None:
        self.step += 1
        terms = torch.stack([value.detach().float() for value in losses.values()])
        first = ~torch.isfinite(terms[0]) & (self.bad_step < 0)
        self.bad_step = torch.where(first, self.step, self.bad_step)
        if self.bad_terms is None:
            self.names, self.bad_terms = list(losses), terms
        else:
            self.bad_terms = torch.where(first, terms, self.bad_terms)

    def check(self, run: _Run, epoch: int) -> None:
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


def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """One epoch of training; returns its record (epoch, step, mean loss terms, speed)."""
    cfg, fabric = run.cfg, run.fabric
    o, t = cfg.optim, cfg.train
    _seed_all(t.seed, epoch, run.rank)
    run.sampler.set_epoch(epoch)
    run.criterion.set_epoch(epoch)
    if hasattr(run.net, "set_epoch"):
        run.net.set_epoch(epoch)  # epoch-dependent models (BBN's cumulative learning)
    run.model.train()
    run.criterion.train()
    watch = _FiniteWatch(fabric.device, run.step)
    term_sums: dict[str, torch.Tensor] = {}
    images_seen, num_batches = 0, 0
    started = time.perf_counter()
    bar = tqdm(
        total=run.steps_per_epoch * o.batch_size,
        desc=f"epoch {epoch + 1}/{o.epochs}",
        unit="img",
        leave=False,
        disable=not (run.rank == 0 and t.progress),
    )
    for batch_index, (images, targets, _) in enumerate(run.train_loader):
        if batch_index >= run.steps_per_epoch:
            break
        images, targets = fabric.to_device((images, targets))
        losses = run.model(images, targets)  # float32 dict: total + every term
        watch.update(losses)
        run.optimizer.zero_grad(set_to_none=True)
        fabric.backward(losses["total"])
        if o.grad_clip is not None:
            fabric.clip_gradients(run.model, run.optimizer, max_norm=o.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        run.step += 1
        num_batches += 1
        if run.ema is not None:
            run.ema.update(run.net, step=run.step)
        for name, value in losses.items():
            term_sums[name] = term_sums.get(name, 0.0) + value.detach()
        images_seen += images.shape[0] * run.world
        bar.update(images.shape[0] * run.world)
        if run.step % t.log_every == 0:
            watch.check(run, epoch)
            bar.set_postfix(loss=f"{losses['total'].item():.4f}")
            run.folder.log_scalars(
                {f"step/loss_{k}": v.item() for k, v in losses.items()}
                | {"step/lr": run.scheduler.get_last_lr()[0]},
                run.step,
            )
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


def _evaluate(run: _Run) -> dict[str, Any]:
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
            scored = score_predictions(prediction, run.groups, run.class_names)
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


def _select_and_save(run: _Run, epoch: int, record: dict[str, Any]) -> None:
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
    restores ``best.ckpt`` from ``last.ckpt`` (``_restore_best``).
    """
    t = run.cfg.train
    has_ema = run.ema is not None
    improved = False
    if "val" in run.eval_loaders:
        candidate = sel.on_val(record, t.select_metric, has_ema)
        if sel.improves(candidate, run.selection):
            run.best = {**jsonable_record(record), "select_metric": t.select_metric}
            run.selection, improved = candidate, True
    last_epoch = epoch + 1 == run.cfg.optim.epochs
    save_last = last_epoch or improved or (epoch + 1) % t.checkpoint_every == 0
    if save_last and (run.selection is None or run.selection["rule"] == "last"):
        run.selection = sel.on_last(epoch + 1, t.select_metric, has_ema)
    # -- records and checkpoints
    record = jsonable_record(record)  # as metrics.jsonl holds it
    run.history.append(record)
    if run.rank != 0:
        return
    # TensorBoard before the commit point, flushed: what a checkpoint covers is on disk, and
    # what a kill replays is purged on resume (RunFolder.resume_step).
    run.folder.log_scalars({k: v for k, v in record.items() if k != "epoch"}, run.step)
    if save_last:
        run.folder.flush_tensorboard()
        state = run.checkpoint_state(epoch + 1, record)
        save_checkpoint(state, run.folder.checkpoints / LAST)  # the commit point
        if improved:
            save_checkpoint(state, run.folder.checkpoints / BEST)
        if run.selection is not None:
            sel.write_selection(run.folder.path, run.selection)
    run.folder.write_records(run.history)
    tqdm.write(_epoch_line(record, run.cfg.optim.epochs))


def _finish(run: _Run, record: dict[str, Any]) -> TrainResult:
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
                folder.write_plots(run.class_names, run.class_freq, run.groups, run.last_ap)
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
