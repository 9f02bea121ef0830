"""The run configuration: typed sections on pydantic, YAML files that hold only differences,
``key=value`` overrides, all checked when the config is loaded, before any data is read.

A ``Config`` is ``data`` + ``method`` + ``optim`` + ``train``; each builder receives only its
own part.

Where a section lives (the rule): beside the code that reads it, in a module that does not
import this one, so that this module only assembles the sections and no import comes back
to it. ``DataConfig`` is in
``mlcnc.data.config`` (read by ``mlcnc.data``: ``build_splits``, ``build_sampler``,
``transforms.transforms_for``), ``MethodConfig`` in ``mlcnc.methods``; ``OptimConfig`` and
``TrainConfig``, read only by the training engine, are here, in the engine's run-level
config module. A builder takes its own section (plus a plain value from another, such as
``transforms_for(cfg.data, cfg.method.recipe, train)``), never the whole ``Config``.

``load_config(name_or_path, overrides)`` starts from the defaults, merges a YAML file
(a shipped name such as ``synthetic`` or ``voc_lt``, or a path; a file may name a ``base`` it
extends), then the overrides, then resolves it (``resolve_config``): the method's options
with their defaults and the dataset's (DB's preset for COCO-LT), the recipe's switches, and
checks that span sections (method name, backbone name, the metric that selects best.ckpt).
Every problem is one ``ConfigError`` line naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Sequence
from dataclasses import field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, Strict, TypeAdapter, ValidationError

from mlcnc.data.config import DataConfig
from mlcnc.methods import METHODS, MethodConfig, resolve_options
from mlcnc.schema import (
    Bool,
    ConfigError,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Str,
    describe_error,
    did_you_mean,
    section,
)
from mlcnc.yaml_file import YAMLRefused, load_yaml

__all__ = [
    "RUNTIME_ONLY_KEYS",
    "Config",
    "ConfigError",
    "OptimConfig",
    "TrainConfig",
    "config_diff",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "load_config",
    "resolve_config",
    "save_config",
    "shipped_configs",
]

Precision = Literal["auto", "32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"]
"""Lightning Fabric precision names; ``auto`` = bf16-mixed (or 16-mixed) on CUDA, 32 on CPU."""

Beta = Annotated[float, Field(ge=0, lt=1)]


@section(key="optim")
class OptimConfig:
    """The ``optim:`` part: by default Adam with coupled L2 and a per-step OneCycle schedule
    (MLC-NC's recipe, spec B4); ``optimizer: sgd`` with ``schedule: step`` gives DB's mmcv
    recipe (momentum, decay on every parameter, linear warm-up over ``warmup_iters``
    iterations from ``warmup_ratio * lr``, x ``gamma`` at each epoch of ``milestones``).

    batch_size is the global batch of one forward/backward pass, summed over all devices
    (each of D devices loads batch_size / D; it must divide by D). Lightning and timm count
    their loader batch per device; here it already counts every device.
    accumulate_grad_batches: k >= 1 such batches (micro-batches) are accumulated per
    optimizer step, so the effective batch of an update is batch_size x k (not x D again:
    batch_size counts the devices). Each micro-batch's loss is divided by k, so the update
    is the gradient of the mean over the k micro-batches; the schedule, EMA, step count,
    gradient clipping (on the accumulated gradient) and logging are per optimizer step.
    An epoch of n batches makes ceil(n / k) steps: its last r = n mod k batches, when not
    0, make one step of their own with each loss divided by r (the mean over those r).
    Exact for losses that are a mean over independent samples; not for a loss with a
    term over the batch (MLC-NC's two-way logsumexp, DB, OLTR, contrastive terms) or for
    BatchNorm statistics, which see one micro-batch at a time (the run warns for the former).
    weight_decay applies to parameters that are not 1-D and whose name does not end in
    ``.bias`` (the official code's groups); the rest get none. lr is OneCycle's maximum;
    it starts at lr / div_factor and ends at lr / (div_factor * final_div_factor); with
    cycle_momentum Adam's beta1 goes max_momentum -> base_momentum -> max_momentum.

    schedule_epochs: the epochs OneCycle is planned over (None: ``epochs``); the run still
    stops after ``epochs``, so ASL's recipe (planned for 80, stopped after 41) is
    ``schedule_epochs: 80, epochs: 41``. Must be at least ``epochs``.
    backbone_lr_scale: the backbone's parameters (the model's ``backbone`` module, the
    pretrained part) train at lr x this, the rest at lr; ML-GCN's ``lrp`` of 0.1.
    ``optimizer: adamw`` (LM-CLIP): decoupled decay ``weight_decay`` on every trainable
    parameter, biases and norms included; ``schedule: cosine``: cosine annealing per epoch
    from lr to 0 over the planned epochs (``CosineAnnealingLR(T_max=epochs)``), no warm-up.
    ``schedule: plateau`` (LMPT): ``ReduceLROnPlateau(mode="max")`` stepped after each
    evaluation on the val value of ``train.select_metric``: lr x ``gamma`` after more than
    ``plateau_patience`` evaluations without a relative gain of 1e-4, not below
    ``plateau_min_lr``; without a val split the lr stays constant (LMPT stepped on test mAP).
    """

    optimizer: Literal["adam", "sgd", "adamw"] = "adam"
    lr: PositiveFloat = 1e-4
    weight_decay: NonNegativeFloat = 1e-4
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    momentum: Fraction = 0.9
    nesterov: Bool = False
    schedule: Literal["onecycle", "constant", "step", "cosine", "plateau"] = "onecycle"
    milestones: list[PositiveInt] = field(default_factory=list)
    gamma: PositiveFloat = 0.1
    plateau_patience: NonNegativeInt = 5
    plateau_min_lr: NonNegativeFloat = 1e-7
    warmup: Literal["none", "linear", "constant", "exp"] = "linear"
    warmup_iters: NonNegativeInt = 500
    warmup_ratio: Annotated[float, Field(gt=0, le=1)] = 1.0 / 3.0
    pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.2
    div_factor: PositiveFloat = 25.0
    final_div_factor: PositiveFloat = 1e4
    cycle_momentum: Bool = True
    base_momentum: Fraction = 0.85
    max_momentum: Fraction = 0.95
    epochs: PositiveInt = 100
    schedule_epochs: PositiveInt | None = None
    batch_size: PositiveInt = 64
    accumulate_grad_batches: PositiveInt = 1
    grad_clip: PositiveFloat | None = None
    backbone_lr_scale: PositiveFloat = 1.0

    def __post_init__(self) -> None:
        if self.schedule_epochs is not None and self.schedule_epochs < self.epochs:
            raise ValueError(
                f"schedule_epochs ({self.schedule_epochs}) must be at least epochs "
                f"({self.epochs}): the schedule cannot end before the run"
            )
        if self.schedule == "plateau" and self.plateau_min_lr >= self.lr:
            raise ValueError(
                f"plateau_min_lr ({self.plateau_min_lr:g}) must be below lr ({self.lr:g}) "
                "under schedule=plateau: the lr never drops below plateau_min_lr, so it "
                "would never drop at all"
            )
        if self.schedule in ("step", "plateau") and self.gamma >= 1:
            raise ValueError(
                f"gamma ({self.gamma:g}) must be below 1 under schedule={self.schedule}: "
                "the lr is multiplied by gamma to lower it"
            )
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
            raise ValueError(
                f"milestones {list(self.milestones)} must be increasing epochs, each once"
            )
        if (
            self.schedule == "onecycle"
            and self.cycle_momentum
            and self.base_momentum > self.max_momentum
        ):
            raise ValueError(
                f"base_momentum ({self.base_momentum:g}) is above max_momentum "
                f"({self.max_momentum:g}) under cycle_momentum: OneCycle cycles the momentum "
                "from max_momentum down to base_momentum and back"
            )

    @property
    def planned_epochs(self) -> int:
        """The epochs the LR schedule is planned over (``schedule_epochs`` or ``epochs``)."""
        return self.schedule_epochs or self.epochs


@section(key="train")
class TrainConfig:
    """The ``train:`` part: where and how the loop runs.

    output:        run folder (None: runs/<config name>-<UTC timestamp>).
    precision:     ``auto`` = bf16-mixed on CUDA with bf16 support, else 16-mixed; 32 on CPU.
    accelerator, devices, num_nodes, strategy: passed to Lightning Fabric (``strategy=ddp``
                   with ``devices=2`` on ``cpu`` uses gloo; torchrun and SLURM are detected).
    find_unused_parameters: DDP option; needed when some parameters get no gradient in
                   some steps (MLC-NC's paper warm-up); turn off for a little speed otherwise.
    num_threads:   CPU threads of each training process (torch.set_num_threads): ``auto``
                   (``engine.threads.auto_num_threads``: on a CPU every core this process
                   may use, shared between the processes of one machine; on a GPU the
                   cores the loader workers leave), a number, or None (PyTorch's default).
    channels_last: NHWC memory format for the images and a convolutional model, in
                   training and evaluation; ``auto`` = on CUDA only. Off by default until
                   benchmarks/gpu_check.sh has measured it on a GPU.
    compile:       torch.compile the model (the losses stay eager, in float32).
    cudnn_benchmark: let cuDNN pick the fastest kernels for the fixed input size (CUDA).
    ema_decay:     EMA of the weights per step (timm ModelEmaV3); 0 disables the EMA.
    ema_warmup:    ramp the EMA decay up from 0 (timm's warm-up), for short runs.
    (Sampler epoch length, workers and class-group thresholds are in ``data:``.)
    eval_every:    evaluate every this many epochs (the last epoch is always evaluated).
    eval_batch_size: evaluation batch per process (None: the training batch per process).
    select_metric: the metric (``val/<metric>`` or ``val_ema/<metric>``) that selects the
                   model: with a val split the regular and the EMA model compete on
                   ``<metric>`` (best.ckpt; a tie within an epoch goes to the named one);
                   without one, the last epoch with the named variant (mlcnc.engine.selection).
    eval_scores:   what AP ranks in every evaluation of the run (and so the selection):
                   ``logits`` (mlcnc), or ``softmax`` over classes per image (LMPT's and
                   LM-CLIP's protocol, which changes AP); ``mlcnc evaluate --scores``
                   recomputes a run's mAP the other way without retraining.
    limit_train_batches / limit_eval_batches: cap the batches per epoch / per evaluation
                   (smoke tests; None = all). The schedule follows the capped epoch. Counted
                   in loader batches (passes, not optimizer steps, under
                   optim.accumulate_grad_batches).
    log_every:     every this many steps: the loss and learning rate to TensorBoard and one
                   line on the console.
    checkpoint_history: also keep every N-th epoch's checkpoint as
                   ``checkpoints/epoch-NNNN.ckpt`` (None: only last.ckpt and best.ckpt).
    loggers:       where the scalars go: ``tensorboard`` (RUN/tensorboard/), ``wandb``,
                   ``mlflow`` (Lightning's loggers; their package imported only when listed,
                   see mlcnc.engine.loggers).
    deterministic: deterministic algorithms only (``torch.use_deterministic_algorithms``,
                   cuDNN deterministic, no cuDNN benchmark): slower; an operation without a
                   deterministic version stops the run naming it.
    summary:       print the resolved config (a line per section) and the model's
                   parameters, trainable parameters and FLOPs per image at the start.
    """

    seed: Annotated[int, Strict(), Field(ge=0, le=2**32 - 1)] = 0  # numpy's seed range
    output: Str | None = None
    precision: Precision = "auto"
    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps", "tpu"] = "auto"
    devices: PositiveInt | Str = 1
    num_nodes: PositiveInt = 1
    strategy: Str = "auto"
    find_unused_parameters: Bool = True
    num_threads: PositiveInt | Literal["auto"] | None = "auto"
    channels_last: Bool | Literal["auto"] = False
    compile: Bool = False
    cudnn_benchmark: Bool = True
    ema_decay: Beta = 0.9997
    ema_warmup: Bool = False
    eval_every: PositiveInt = 1
    eval_batch_size: PositiveInt | None = None
    select_metric: Str = "val/map_total"
    eval_scores: Literal["logits", "softmax"] = "logits"
    log_every: PositiveInt = 20
    checkpoint_every: PositiveInt = 1
    checkpoint_history: PositiveInt | None = None
    loggers: list[Literal["tensorboard", "wandb", "mlflow"]] = field(
        default_factory=lambda: ["tensorboard"]
    )
    deterministic: Bool = False
    limit_train_batches: PositiveInt | None = None
    limit_eval_batches: PositiveInt | None = None
    progress: Bool = True
    plots: Bool = True
    summary: Bool = True


@section
class Config:
    """A whole run: each part goes to its own builder."""

    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


RUNTIME_ONLY_KEYS: tuple[str, ...] = (
    "train.output",
    "train.progress",
    "train.plots",
    "train.summary",
    "train.log_every",
    "train.checkpoint_every",
    "train.checkpoint_history",
    "train.loggers",
    "train.num_threads",
    "data.num_workers",
)
"""Keys that change where or how verbosely (or how fast) a run goes, not what it computes:
they may differ when a run is resumed or a finished benchmark run is read back."""


# --------------------------------------------------------------------------------------
# dict <-> config, with checks


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict (str, int, float, bool, None, list, dict) of a config or section."""
    return _plain(dataclasses.asdict(cfg))


def config_from_dict(data: dict[str, Any], cls: type = Config, where: str = "") -> Any:
    """Build ``cls`` from a (partial) dict; missing keys keep their defaults. A whole
    ``Config`` is also resolved (``resolve_config``).

    Raises ConfigError naming the key (``optim.lr``) for an unknown key or a bad value.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    try:
        value = TypeAdapter(cls).validate_python(data)
    except ValidationError as error:
        raise ConfigError(describe_error(error, cls, prefix=where)) from None
    return resolve_config(value) if cls is Config else value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def resolve_config(cfg: Config) -> Config:
    """Fill in and check what spans sections: the method (a registered name, a known
    backbone, its options with their defaults and the dataset's, the recipe's switches) and
    ``train.select_metric``. Idempotent; raises ConfigError naming the key."""
    from mlcnc.metrics import selection_metrics
    from mlcnc.models.backbone import check_backbone_name

    method = cfg.method
    if method.name not in METHODS:
        raise ConfigError(
            f"bad value {method.name!r} for 'method.name'; allowed values: "
            f"{', '.join(METHODS.names())}{did_you_mean(method.name, METHODS.names())}"
        )
    problem = check_backbone_name(method.backbone)
    if problem is not None:
        raise ConfigError(f"bad value {method.backbone!r} for 'method.backbone': {problem}")
    method.model, method.loss = resolve_options(method, cfg.data.name)
    if cfg.optim.schedule == "step" and not cfg.optim.milestones:
        raise ConfigError("optim.schedule=step needs optim.milestones (epochs), e.g. [5, 7]")
    allowed = selection_metrics(ema=cfg.train.ema_decay > 0)
    if cfg.train.select_metric not in allowed:
        raise ConfigError(
            f"bad value {cfg.train.select_metric!r} for 'train.select_metric'; allowed values: "
            f"{', '.join(allowed)}{did_you_mean(cfg.train.select_metric, allowed)}"
        )
    return cfg


# --------------------------------------------------------------------------------------
# files and overrides


class ConfigFileError(ConfigError, FileNotFoundError):
    """A config named on the command line that is not there (a usage error: exit 2)."""


def shipped_configs() -> list[str]:
    """Names of the configs shipped in the package (``mlcnc/configs/*.yaml``)."""
    folder = resources.files("mlcnc") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def config_path(name_or_path: str) -> Path:
    """The file for a shipped config name or a path; a clear error when neither exists."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            raise ConfigFileError(f"config file {path} is a folder, not a YAML file")
        if not path.is_file():
            raise ConfigFileError(f"config file {path} does not exist")
        return path
    shipped = Path(str(resources.files("mlcnc") / "configs" / f"{name_or_path}.yaml"))
    if not shipped.is_file():
        raise ConfigFileError(
            f"no config named {name_or_path!r}; shipped configs: {', '.join(shipped_configs())} "
            f"(or give a path to a .yaml file){did_you_mean(name_or_path, shipped_configs())}"
        )
    return shipped


def read_config_file(name_or_path: str, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The differences a YAML file holds, its ``base`` (a name or a relative path) merged in."""
    path = config_path(name_or_path).resolve()
    if path in _seen:
        raise ConfigError(f"config {path} includes itself through 'base'")
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = load_yaml(text) or {}
    except YAMLRefused as error:
        raise ConfigError(f"config {path}: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"config {path}: not UTF-8 text ({error.reason})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config {path}{line}: not valid YAML ({error})".split("\n")[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    base_ref = str(path.parent / base) if str(base).endswith((".yaml", ".yml")) else str(base)
    return merge_dicts(read_config_file(base_ref, (*_seen, path)), data)


def merge_dicts(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base``, recursively for mappings."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.lr=3e-4"`` -> ``{"optim": {"lr": 3e-4}}`` (the value read as YAML)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad override {text!r}; expected key=value, e.g. optim.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(
            f"bad override {text!r}: the value is not valid YAML; quote it, e.g. {key}='...'"
        ) from None
    nested: dict[str, Any] = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.:-]*=")


def is_override(text: str) -> bool:
    """Whether a command-line word is a ``key=value`` override (``<method>:key=value`` too)."""
    return _OVERRIDE.match(text) is not None


def merge_data_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A saved config's ``data:`` dict with ``key=value`` (or ``data.key=value``) overrides,
    e.g. to point a checkpoint's dataset at the images on this machine."""
    sections = [f.name for f in dataclasses.fields(Config) if f.name != "data"]
    for text in overrides:
        section = text.partition("=")[0].partition(".")[0]
        if section in sections:
            raise ConfigError(
                f"{text}: only the checkpoint's data config can be changed here (data.KEY=VALUE "
                f"or KEY=VALUE, e.g. data.test_csv=...); {section}.* is the checkpoint's own, "
                "fixed by its training"
            )
        key = text if text.startswith("data.") else f"data.{text}"
        data = merge_dicts(data, parse_override(key)["data"])
    return data


def load_config(
    name_or_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Defaults <- a YAML file (shipped name or path; None = no file) <- ``key=value``
    overrides, resolved and checked (see the module docstring)."""
    data: dict[str, Any] = {}
    if name_or_path is not None:
        data = read_config_file(name_or_path)
    file_method = data.get("method", {}) if isinstance(data.get("method"), dict) else {}
    for text in overrides:
        data = merge_dicts(data, parse_override(text))
    _drop_foreign_file_options(data, file_method, overrides)
    return config_from_dict(data)


def _drop_foreign_file_options(
    data: dict[str, Any], file_method: dict[str, Any], overrides: Sequence[str]
) -> None:
    """Leave out the file's ``method.model`` / ``method.loss`` options that the chosen method
    does not take, with a warning.

    A config file's options were written for the method it names; when a run picks another
    method (``method.name=erm`` on the synthetic config, or a benchmark run), they do not
    apply. Options given as overrides are kept, so a wrong one is still an error.
    """
    from mlcnc.methods import method_defaults

    method = data.get("method")
    if not isinstance(method, dict):
        return
    name = method.get("name", MethodConfig().name)
    if not isinstance(name, str) or name not in METHODS:
        return  # resolve_config names the problem
    defaults = method_defaults(name)
    if defaults is None:
        return
    given = [parse_override(text).get("method", {}) for text in overrides]
    for part in ("model", "loss"):
        from_file = file_method.get(part) or {}
        options = method.get(part)
        if not isinstance(from_file, dict) or not isinstance(options, dict):
            continue
        overridden = {k for g in given if isinstance(g.get(part), dict) for k in g[part]}
        for key in sorted(set(from_file) - set(defaults[part]) - overridden):
            warnings.warn(
                f"the config file's method.{part}.{key} does not apply to method "
                f"{name!r}; left out",
                stacklevel=3,
            )
            options.pop(key, None)


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts."""
    keys = sorted(set(a) | set(b))
    diffs = []
    for key in keys:
        name = f"{prefix}.{key}" if prefix else key
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs.extend(config_diff(va, vb, name))
        elif va != vb:
            diffs.append(name)
    return diffs


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text (every key, in the sections' order)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (every key, so the run folder says what ran)."""
    from mlcnc.io import write_atomic

    write_atomic(path, dump_config(cfg))
