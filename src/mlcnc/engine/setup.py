"""One process's run, built before the first epoch: Fabric, then ``setup`` in small steps.

``setup`` reads: compute options and checks of the config against the processes -> the run
folder (chosen; refused early when a new run would reuse it) -> data, checked (and against
the checkpoint when resuming) -> method (model, criterion, sampler kind; restored when
resuming) -> loaders -> optimiser, schedule, Fabric wrapping, EMA -> the ``Run`` -> state
restored from the checkpoint (``engine.resume.restore_run``) -> the folder taken and
written (``engine.resume.open_folder``).

Nothing is written until everything that can be checked is checked (folder, data, method,
schedule): a refused run leaves no trace, and a retry is not a "reuse".
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric import Fabric
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mlcnc.config import Config, ConfigError, config_to_dict
from mlcnc.data import DataError, build_dataset, build_sampler, build_splits
from mlcnc.data import transforms as data_transforms
from mlcnc.data.check import write_problems
from mlcnc.data.longtail import class_groups
from mlcnc.data.paired import PairedDataset
from mlcnc.engine.checkpoint import FORMAT, data_record, plain_state_dict
from mlcnc.engine.data_check import DROPPED_FILE, check_training_split, checked_splits
from mlcnc.engine.evaluation import eval_loader
from mlcnc.engine.optim import build_optimizer, build_scheduler
from mlcnc.engine.resume import Resume, check_resume_data, open_folder, restore_run
from mlcnc.engine.run_folder import (
    RunFolder,
    RunFolderError,
    default_run_dir,
    refuse_message,
    run_contents,
)
from mlcnc.engine.summary import config_lines, model_line
from mlcnc.engine.task import ModelWithLoss
from mlcnc.engine.traps import check_launcher, start_warnings
from mlcnc.losses.base import Criterion
from mlcnc.methods import Method, build_method, check_input_size


def make_fabric(cfg: Config) -> Fabric:
    """Fabric from ``train:``; ``precision=auto`` is bf16-mixed / 16-mixed on CUDA, 32 on CPU."""
    t = cfg.train
    check_launcher(cfg)
    from mlcnc.engine.loggers import check_loggers

    check_loggers(t.loggers)  # a tracker's missing package: one line before any work
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
    try:
        return Fabric(
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=strategy,
            precision=precision,
        )
    except (ValueError, TypeError, RuntimeError, ImportError, MisconfigurationException) as error:
        # Lightning refuses the accelerator, devices, strategy or nodes (tpu: no torch_xla)
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ConfigError(
            f"train.accelerator={t.accelerator}, train.devices={t.devices}, "
            f"train.strategy={t.strategy}, train.num_nodes={t.num_nodes}: Lightning refuses "
            f"them: {lines[0] if lines else type(error).__name__}"
        ) from None


def check_batch_norm(model: nn.Module, batch_per_device: int, cfg: Config) -> None:
    """A model with BatchNorm cannot train on batches of one image (PyTorch refuses it)."""
    norms = (nn.modules.batchnorm._BatchNorm,)
    if batch_per_device < 2 and any(isinstance(m, norms) for m in model.modules()):
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} gives {batch_per_device} image per "
            f"process, and the model (method.backbone={cfg.method.backbone}) has BatchNorm "
            "layers, which need at least 2 images per batch in training; use "
            "optim.batch_size >= 2 per process"
        )


@dataclass
class Run:
    """What one process holds during a run (built by ``setup``)."""

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
    steps_per_epoch: int  # optimizer steps (what the schedule counts)
    batches_per_epoch: int  # loader batches (micro-batches under gradient accumulation)
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
            "format": FORMAT,  # see checkpoint.upgrade_checkpoint
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


def setup(fabric: Fabric, cfg: Config, config_name: str, plan: Resume) -> Run:
    """Data, method, optimiser, schedule and EMA of one process; restored when resuming."""
    set_compute_options(fabric, cfg)
    batch_per_device = check_process_options(fabric, cfg)
    folder = choose_folder(fabric, cfg, config_name, plan)
    splits, dropped = read_data(fabric, cfg, plan)
    train_split = splits["train"]
    class_freq = train_split.labels.sum(axis=0).astype(np.int64)
    # Method: model, criterion, sampler kind. Same init on every rank (seeded in read_data).
    method = build_checked_method(cfg, train_split, class_freq)
    check_batch_norm(method.model, batch_per_device, cfg)
    if plan.state is not None:
        from mlcnc.engine.resume import load_saved

        load_saved(plan, "model", method.model.load_state_dict, plan.state["model"])
        load_saved(plan, "criterion", method.criterion.load_state_dict, plan.state["criterion"])
    sampler, train_loader, eval_loaders = build_loaders(
        fabric, cfg, method, splits, batch_per_device
    )
    batches_per_epoch = len(train_loader)
    if cfg.train.limit_train_batches is not None:
        batches_per_epoch = min(batches_per_epoch, cfg.train.limit_train_batches)
    check_trainable(cfg, train_split, batches_per_epoch, batch_per_device)
    # Optimizer steps: every optim.accumulate_grad_batches batches, and the epoch's tail.
    steps_per_epoch = -(-batches_per_epoch // cfg.optim.accumulate_grad_batches)
    optimizer, scheduler = build_optimization(fabric, cfg, method, steps_per_epoch)
    model, fabric_optimizer, ema = wrap_for_training(fabric, cfg, method, optimizer)
    # Said once everything is built: a config that cannot run fails first, in one line.
    if fabric.global_rank == 0 and cfg.train.summary:
        for line in [
            *config_lines(config_to_dict(cfg)),
            model_line(method.model, cfg.method.name, cfg.method.backbone, cfg.data.image_size),
        ]:
            tqdm.write(line)
    for line in start_warnings(cfg, method.criterion, steps_per_epoch):
        note(fabric.global_rank, line)
    d = cfg.data
    run = Run(
        fabric=fabric,
        cfg=cfg,
        folder=folder,
        class_names=list(train_split.class_names),
        class_freq=class_freq,
        groups=class_groups(class_freq, head=d.head_threshold, tail=d.tail_threshold),
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
        batches_per_epoch=batches_per_epoch,
        data=data_record(train_split, {k: v for k, v in splits.items() if k != "train"}),
    )
    if plan.state is not None:
        restore_run(run, plan.state, optimizer)
    take_folder(run, plan, dropped)
    return run


def check_process_options(fabric: Fabric, cfg: Config) -> int:
    """Check the config against the processes and the precision; the batch per process."""
    o, world = cfg.optim, fabric.world_size
    if o.batch_size % world:
        raise ConfigError(
            f"optim.batch_size={o.batch_size} (the global batch) must divide by the "
            f"{world} processes"
        )
    if fabric.strategy.precision.precision == "16-true" and o.optimizer.startswith("adam"):
        tiny = torch.finfo(torch.float16).tiny
        if o.eps < tiny:
            # Adam's state lives in float16 too: eps rounds to 0 and updates become NaN.
            raise ConfigError(
                f"train.precision=16-true keeps Adam's state in float16, where optim.eps="
                f"{o.eps:g} is below the smallest normal float16 ({tiny:.1e}) and the updates "
                "become NaN; set optim.eps=1e-4 or use train.precision=16-mixed"
            )
    return o.batch_size // world


def choose_folder(fabric: Fabric, cfg: Config, config_name: str, plan: Resume) -> RunFolder:
    """The run folder (rank 0 picks the name; a timestamp could differ between processes). A
    new run into a folder that holds one is refused before any data are read."""
    t = cfg.train
    if plan.run_dir is not None:
        run_dir = plan.run_dir
    else:
        run_dir = Path(t.output) if t.output else default_run_dir(config_name)
    run_dir = Path(fabric.broadcast(str(run_dir), src=0))
    if plan.mode == "new":
        on_rank0(fabric, lambda: refuse_a_used_folder(run_dir))
    return RunFolder(run_dir, enabled=fabric.global_rank == 0)


def refuse_a_used_folder(run_dir: Path) -> None:
    """A new run must not start in a folder holding a run (checked again under the lock)."""
    found = run_contents(run_dir)
    if found:
        raise RunFolderError(refuse_message(run_dir, found))


def read_data(fabric: Fabric, cfg: Config, plan: Resume) -> tuple[dict[str, Any], list[Any]]:
    """The splits, every image checked (``engine.data_check.checked_splits``) on every rank
    before the folder is locked or anything is written, and against the checkpoint when
    resuming; returns the splits to train on and the rows dropped with
    ``data.skip_bad_images`` (written to the run folder once it is opened). Dropped rows
    change the training split's fingerprint, so a resume compares the data as trained."""
    t, rank = cfg.train, fabric.global_rank
    fabric.seed_everything(t.seed, verbose=False)
    with fabric.rank_zero_first():  # the synthetic benchmark is generated on first use
        splits = build_splits(cfg.data)
    splits, dropped = checked_splits(cfg.data, splits, progress=rank == 0 and t.progress)
    check_training_split(splits["train"])
    if plan.state is not None:
        evaluated = {k: v for k, v in splits.items() if k != "train"}
        for line in check_resume_data(plan, splits["train"], evaluated):
            note(rank, line)
    return splits, dropped


def build_checked_method(cfg: Config, split: Any, class_freq: np.ndarray) -> Method:
    """``build_method`` with a builder's ValueError (options that do not fit the data)
    turned into a one-line user error naming the method and the data; then one image of
    ``data.image_size`` through the model (``check_input_size``, as ``--dry-run``)."""
    class_names = list(split.class_names)
    if cfg.train.eval_scores == "softmax" and len(class_names) < 2:
        from mlcnc.metrics import softmax_refusal

        raise ConfigError(softmax_refusal("train.eval_scores=softmax", split.source, class_names))
    try:
        method = build_method(
            cfg.method,
            len(class_names),
            class_freq,
            num_samples=len(split.labels),
            data_name=cfg.data.name,
            train_labels=split.labels,
            epochs=cfg.optim.epochs,
            class_names=class_names,
            train_paths=split.image_paths,
        )
        check_input_size(method.model, cfg.method, cfg.data.image_size)
        return method
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


def build_loaders(
    fabric: Fabric, cfg: Config, method: Method, splits: dict[str, Any], batch_per_device: int
) -> tuple[Any, DataLoader, dict[str, DataLoader]]:
    """The training sampler and loader, and the val / test loaders (each rank its share)."""
    t, d = cfg.train, cfg.data
    rank, world = fabric.global_rank, fabric.world_size
    train_split = splits["train"]
    eval_transform = data_transforms.transforms_for(d, cfg.method.recipe, train=False)
    train_transform = data_transforms.transforms_for(d, cfg.method.recipe, train=True)
    train_set = build_dataset(train_split, train_transform, max_pixels=d.max_image_pixels)
    sampler = build_sampler(
        method.sampler, train_split.labels, d, seed=t.seed, rank=rank, world_size=world
    )
    if method.sampler.startswith("paired"):
        train_set = PairedDataset(train_set)  # (2, 3, H, W) per sample: uniform + re-balanced
    pin = fabric.device.type == "cuda"
    # The loader is not passed through fabric.setup_dataloaders: its wrapper would call
    # sampler.set_epoch with its own count of epochs in this process, which breaks resume.
    train_loader = DataLoader(
        train_set,
        batch_size=batch_per_device,
        sampler=sampler,
        num_workers=d.num_workers,
        pin_memory=pin,
        # A last batch of one sample breaks BatchNorm in training mode: drop only that.
        drop_last=len(sampler) % batch_per_device == 1,
    )
    eval_batch = t.eval_batch_size or batch_per_device
    eval_loaders = {
        name: eval_loader(
            build_dataset(splits[name], eval_transform, max_pixels=d.max_image_pixels),
            eval_batch,
            d.num_workers,
            rank,
            world,
            pin,
        )
        for name in ("val", "test")
        if name in splits
    }
    return sampler, train_loader, eval_loaders


def check_trainable(cfg: Config, split: Any, steps_per_epoch: int, batch_per_device: int) -> None:
    """A one-line DataError when the training split cannot make one training step."""
    if len(split) < 2 or steps_per_epoch < 1:
        raise DataError(
            f"{split.source}: {len(split)} training image(s) make no training step with "
            f"optim.batch_size={cfg.optim.batch_size} ({batch_per_device} per process; a "
            "batch of one image is dropped, BatchNorm needs two); add training images "
            "(at least 2) or lower optim.batch_size"
        )


def build_optimization(
    fabric: Fabric, cfg: Config, method: Method, steps_per_epoch: int
) -> tuple[Any, Any]:
    """The optimiser (Adam with coupled L2 groups, or SGD) and its per-step schedule."""
    o = cfg.optim
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
    return optimizer, scheduler


def wrap_for_training(
    fabric: Fabric, cfg: Config, method: Method, optimizer: Any
) -> tuple[Any, Any, Any]:
    """The model and loss as one module, set up by Fabric with the optimiser; the EMA."""
    t = cfg.train
    channels_last = uses_channels_last(cfg, fabric.device)
    if channels_last:
        method.model.to(memory_format=torch.channels_last)
    wrapped = ModelWithLoss(method.model, method.criterion, channels_last=channels_last)
    if t.compile:
        wrapped.model = torch.compile(method.model)  # the criterion stays eager, float32
    model, fabric_optimizer = fabric.setup(wrapped, optimizer)
    method.criterion.to(fabric.device)
    ema = None
    if t.ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(method.model, decay=t.ema_decay, use_warmup=t.ema_warmup)
    return model, fabric_optimizer, ema


def take_folder(run: Run, plan: Resume, dropped: list[Any]) -> None:
    """Everything checked: take the folder (lock, refuse / clear / continue), then write."""
    fabric, rank, folder = run.fabric, run.rank, run.folder
    for line in on_rank0(fabric, lambda: open_folder(run, plan)) or []:
        note(rank, line)
    if dropped and rank == 0:
        path = write_problems(dropped, folder.path / DROPPED_FILE)
        note(
            rank, f"left out {len(dropped)} unreadable image(s) (data.skip_bad_images); see {path}"
        )
    if rank == 0:
        from mlcnc.engine.loggers import make_loggers

        folder.use_tensorboard = "tensorboard" in run.cfg.train.loggers
        folder.trackers = make_loggers(run.cfg.train.loggers, folder.path, config_to_dict(run.cfg))
    if plan.state is not None and plan.state["history"] is None and run.world > 1:
        # A checkpoint without an epoch history: the records come from the folder's
        # metrics.jsonl (rank 0 read it; every rank needs them for the result).
        run.history = fabric.broadcast(run.history, src=0)


def set_compute_options(fabric: Fabric, cfg: Config) -> None:
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
        torch.backends.cudnn.benchmark = t.cudnn_benchmark and not t.deterministic
    if t.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (CUDA >= 10.2).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)


def uses_channels_last(cfg: Config, device: torch.device) -> bool:
    """Whether images and model use the NHWC memory format (``train.channels_last``)."""
    value = cfg.train.channels_last
    return device.type == "cuda" if value == "auto" else bool(value)


def on_rank0(fabric: Fabric, function: Callable[[], Any]) -> Any:
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


def note(rank: int, message: str) -> None:
    """A line for the user on stderr (rank 0 only)."""
    if rank == 0:
        tqdm.write(f"mlcnc: {message}", file=sys.stderr)
