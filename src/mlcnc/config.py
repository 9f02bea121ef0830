"""The run configuration: typed dataclasses, YAML files that hold only differences, overrides.

A ``Config`` is ``data`` + ``method`` + ``optim`` + ``train``; each builder receives only its
own part. ``load_config(name_or_path, overrides)`` starts from the defaults, merges a YAML file
(a shipped name such as ``synthetic`` or ``voc_lt``, or a path; a file may name a ``base`` it
extends), then ``key=value`` overrides, and checks every key and value on the way, so a typo
fails with the key and the allowed keys or values instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from mlcnc.data import DataConfig
from mlcnc.methods import MethodConfig

Precision = Literal["auto", "32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"]
"""Lightning Fabric precision names; ``auto`` = bf16-mixed (or 16-mixed) on CUDA, 32 on CPU."""


class ConfigError(ValueError):
    """A config key or value is wrong; the message names it and what is allowed."""


@dataclass
class OptimConfig:
    """The ``optim:`` part: Adam with coupled L2 and a per-step OneCycle schedule (spec B4).

    batch_size is the global batch (over all devices); it must divide by the device count.
    weight_decay applies to parameters that are not 1-D and whose name does not end in
    ``.bias`` (the official code's groups); the rest get none. lr is OneCycle's maximum;
    it starts at lr / div_factor and ends at lr / (div_factor * final_div_factor); with
    cycle_momentum Adam's beta1 goes max_momentum -> base_momentum -> max_momentum.
    """

    optimizer: Literal["adam"] = "adam"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Literal["onecycle", "constant"] = "onecycle"
    pct_start: float = 0.2
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    cycle_momentum: bool = True
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    epochs: int = 100
    batch_size: int = 64
    grad_clip: float | None = None


@dataclass
class TrainConfig:
    """The ``train:`` part: where and how the loop runs.

    output:        run folder (None: runs/<config name>-<UTC timestamp>).
    precision:     ``auto`` = bf16-mixed on CUDA with bf16 support, else 16-mixed; 32 on CPU.
    accelerator, devices, num_nodes, strategy: passed to Lightning Fabric (``strategy=ddp``
                   with ``devices=2`` on ``cpu`` uses gloo; torchrun and SLURM are detected).
    find_unused_parameters: DDP option; needed when some parameters get no gradient in
                   some steps (MLC-NC's paper warm-up); turn off for a little speed otherwise.
    num_threads:   CPU threads of each training process (torch.set_num_threads; None = the
                   PyTorch default). 1 leaves the other cores to the data-loading workers.
    ema_decay:     EMA of the weights per step (timm ModelEmaV3); 0 disables the EMA.
    ema_warmup:    ramp the EMA decay up from 0 (timm's warm-up), for short runs.
    (Sampler epoch length, workers and class-group thresholds are in ``data:``.)
    eval_every:    evaluate every this many epochs (the last epoch is always evaluated).
    select_metric: metric (a key of metrics.jsonl) that picks best.ckpt; used only when the
                   data has a val split.
    limit_train_batches / limit_eval_batches: cap the batches per epoch / per evaluation
                   (smoke tests; None = all). The schedule follows the capped epoch.
    """

    seed: int = 0
    output: str | None = None
    precision: Precision = "auto"
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    find_unused_parameters: bool = True
    num_threads: int | None = None
    ema_decay: float = 0.9997
    ema_warmup: bool = False
    eval_every: int = 1
    eval_batch_size: int | None = None
    select_metric: str = "val/map_total"
    log_every: int = 20
    checkpoint_every: int = 1
    limit_train_batches: int | None = None
    limit_eval_batches: int | None = None
    progress: bool = True
    plots: bool = True


@dataclass
class Config:
    """A whole run: each part goes to its own builder."""

    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------------------
# dict <-> dataclass, with checks


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict (str, int, float, bool, None, list, dict) of a config dataclass."""
    return _plain(dataclasses.asdict(cfg))


def config_from_dict(data: dict[str, Any], cls: type = Config, where: str = "") -> Any:
    """Build ``cls`` from a (partial) dict; missing keys keep their defaults.

    Raises ConfigError naming the key (``optim.lr``) for an unknown key or a bad value.
    """
    return _build_dataclass(cls, data, where)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _build_dataclass(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(
            f"unknown config key {key!r}; allowed keys{' under ' + repr(where) if where else ''}: "
            f"{', '.join(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:  # a section's own checks (__post_init__)
        raise ConfigError(f"{where or 'config'}: {error}") from None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type hint and convert what is safe (int -> float, list -> tuple)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build_dataclass(hint, value, key)
    if hint is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"bad value {value!r} for {key!r}; allowed values: {', '.join(map(repr, args))}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        # None first, then exact types before conversions (so True stays a bool in bool | str).
        for option in sorted(args, key=lambda a: (a is not type(None), a is not type(value))):
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        names = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"bad value {value!r} for {key!r}; expected {names}")
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"bad value {value!r} for {key!r}; expected null")
        return None
    if origin in (dict,):
        if not isinstance(value, dict):
            raise ConfigError(f"bad value {value!r} for {key!r}; expected a mapping")
        return dict(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"bad value {value!r} for {key!r}; expected a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"bad value {value!r} for {key!r}; expected {len(args)} items")
            return tuple(
                _coerce(v, a, f"{key}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item = args[0] if args else Any
        converted = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"bad value {value!r} for {key!r}; expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"bad value {value!r} for {key!r}; expected an integer")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"bad value {value!r} for {key!r}; expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"bad value {value!r} for {key!r}; expected a string")
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"bad value {value!r} for {key!r}; expected a path")
        return Path(value)
    return value


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    return getattr(hint, "__name__", str(hint))


# --------------------------------------------------------------------------------------
# files and overrides


def shipped_configs() -> list[str]:
    """Names of the configs shipped in the package (``mlcnc/configs/*.yaml``)."""
    folder = resources.files("mlcnc") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def config_path(name_or_path: str) -> Path:
    """The file for a shipped config name or a path; a clear error when neither exists."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        return path
    shipped = Path(str(resources.files("mlcnc") / "configs" / f"{name_or_path}.yaml"))
    if not shipped.is_file():
        raise FileNotFoundError(
            f"no config named {name_or_path!r}; shipped configs: {', '.join(shipped_configs())} "
            f"(or give a path to a .yaml file)"
        )
    return shipped


def read_config_file(name_or_path: str, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The differences a YAML file holds, its ``base`` (a name or a relative path) merged in."""
    path = config_path(name_or_path).resolve()
    if path in _seen:
        raise ConfigError(f"config {path} includes itself through 'base'")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
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
    if not sep or not key:
        raise ConfigError(f"bad override {text!r}; expected key=value, e.g. optim.lr=3e-4")
    value = yaml.safe_load(raw) if raw.strip() else None
    nested: dict[str, Any] = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def merge_data_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A saved config's ``data:`` dict with ``key=value`` (or ``data.key=value``) overrides,
    e.g. to point a checkpoint's dataset at the images on this machine."""
    for text in overrides:
        key = text if text.startswith("data.") else f"data.{text}"
        data = merge_dicts(data, parse_override(key)["data"])
    return data


def load_config(
    name_or_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Defaults <- a YAML file (shipped name or path; None = no file) <- ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if name_or_path is not None:
        data = read_config_file(name_or_path)
    file_method = data.get("method", {}) if isinstance(data.get("method"), dict) else {}
    for text in overrides:
        data = merge_dicts(data, parse_override(text))
    cfg = config_from_dict(data)
    check_config(cfg)
    _drop_foreign_file_options(cfg, file_method, overrides)
    return cfg


def _drop_foreign_file_options(
    cfg: Config, file_method: dict[str, Any], overrides: list[str] | tuple[str, ...]
) -> None:
    """Leave out the file's ``method.model`` / ``method.loss`` options that the chosen method
    does not take, with a warning.

    A config file's options were written for the method it names; when a run picks another
    method (``method.name=erm`` on the synthetic config, or a benchmark run), they do not
    apply. Options given as overrides are kept, so a wrong one is still an error.
    """
    from mlcnc.methods import method_defaults

    defaults = method_defaults(cfg.method.name)
    if defaults is None:
        return
    given = [parse_override(text).get("method", {}) for text in overrides]
    for part in ("model", "loss"):
        from_file = file_method.get(part) or {}
        overridden = {k for g in given if isinstance(g.get(part), dict) for k in g[part]}
        options: dict[str, Any] = getattr(cfg.method, part)
        for key in sorted(set(from_file) - set(defaults[part]) - overridden):
            warnings.warn(
                f"the config file's method.{part}.{key} does not apply to method "
                f"{cfg.method.name!r}; left out",
                stacklevel=3,
            )
            options.pop(key, None)


def check_config(cfg: Config) -> None:
    """Checks that need the registries or span sections (ConfigError naming the key)."""
    from mlcnc.methods import METHODS

    if cfg.method.name not in METHODS:
        raise ConfigError(
            f"bad value {cfg.method.name!r} for 'method.name'; allowed values: "
            f"{', '.join(METHODS.names())}"
        )
    positive = {
        "optim.epochs": cfg.optim.epochs,
        "optim.batch_size": cfg.optim.batch_size,
        "train.eval_every": cfg.train.eval_every,
        "train.checkpoint_every": cfg.train.checkpoint_every,
        "train.log_every": cfg.train.log_every,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"bad value {value!r} for {key!r}; expected an integer >= 1")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ConfigError(
            f"bad value {cfg.train.ema_decay!r} for 'train.ema_decay'; expected 0 <= decay < 1"
        )


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


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (every key, so the run folder says what ran)."""
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
