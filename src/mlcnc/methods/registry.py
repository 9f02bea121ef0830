"""The method registry: a config picks a method by name, one registered record per method.

A method is what differs between the rows of the paper's Table 1; the backbone, data,
optimiser and epoch budget come from the rest of the config and are shared. Its record
(``MethodRecord``) holds everything about it in one place: its builder, its model and loss
options as typed structures with their defaults (and where each default comes from), its
sampler, its display name, and what it needs from the data (class counts, the training-set
size, per-dataset presets such as DB's). ``resolve_options`` fills a config's options from
the record, so ``mlcnc config show``, ``train``, ``benchmark`` and ``evaluate`` all see the
same values. The methods themselves live one family per module of ``mlcnc.methods``, each
registering itself; ``method_table`` lists them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import TypeAdapter, ValidationError
from torch import nn

from mlcnc.losses.base import Criterion
from mlcnc.recipes import RecipeName
from mlcnc.registry import Registry
from mlcnc.schema import (
    Bool,
    ConfigError,
    Str,
    describe_error,
    did_you_mean,
    section,
)

SamplerKind = Literal["random", "class_aware", "paired_reversed", "paired_class_aware", "weighted"]
"""``random`` / ``class_aware`` draw one image per sample; the paired kinds draw two (a
uniform one and a re-balanced one: reversed (BBN) or class-aware (URS)); ``weighted`` draws
images with probability by LM-CLIP's sample weights (power ``data.sampler_power``)."""


@section(key="method")
class MethodConfig:
    """The ``method:`` part of a config.

    name:       a registered method (``mlcnc``, ``erm``, ...; see ``METHODS.names()``).
    backbone:   torchvision ResNet name or any timm model with spatial features.
    pretrained: True (the backbone's canonical ImageNet weights), False, or a local file.
    recipe:     ``paper`` or ``official`` (``mlcnc.recipes``), for methods that have recipes.
    model:      the model builder's options (``resolve_options`` fills in the defaults).
    loss:       the criterion's options (likewise).
    sampler:    override of the method's own sampler choice (None keeps it).
    """

    name: Str = "mlcnc"
    backbone: Str = "resnet50"
    pretrained: Bool | Str = True
    recipe: RecipeName = "paper"
    model: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    sampler: SamplerKind | None = None


@dataclass
class Method:
    model: nn.Module
    criterion: Criterion
    sampler: SamplerKind


@dataclass(frozen=True)
class BuildRequest:
    """What a builder gets: the method config, its resolved options and the data's facts.

    class_freq (C,) training positives per class; num_samples the number of training images;
    train_labels (N, C) the training labels (co-occurrence statistics: ML-GCN, MFM; None when
    a trained model is rebuilt: those statistics are buffers its checkpoint restores);
    epochs the training epochs (BBN's cumulative learning); train_paths the training images'
    paths in split order (LMPT aligns its captions by them; None when a trained model is
    rebuilt).
    """

    cfg: MethodConfig
    model: dict[str, Any]
    loss: dict[str, Any]
    num_classes: int
    class_freq: np.ndarray
    num_samples: int | None
    train_labels: np.ndarray | None = None
    epochs: int | None = None
    class_names: tuple[str, ...] | None = None
    train_paths: tuple[str, ...] | None = None


Builder = Callable[[BuildRequest], Method]


@dataclass(frozen=True)
class MethodRecord:
    """Everything about one method.

    model_options / loss_options: ``section`` classes whose fields are the options and their
        defaults (None: free-form options the builder checks itself).
    data_defaults: ``data.name`` -> loss options that dataset implies (DB's preset).
    finalize: fills the options that depend on others (the recipe's switches, DB's preset
        values), so the resolved config says exactly what runs.
    needs_num_samples: the builder needs the number of training images.
    source: where the method and its defaults come from.
    published_configs: ``data.name`` -> the shipped config of the method's own published
        recipe on that benchmark (``mlcnc benchmark --recipes published``).
    """

    name: str
    display_name: str
    build: Builder
    sampler: SamplerKind
    model_options: type | None = None
    loss_options: type | None = None
    data_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    finalize: Callable[[MethodConfig, dict[str, Any], dict[str, Any]], None] | None = None
    needs_num_samples: bool = False
    source: str = ""
    published_configs: Mapping[str, str] = field(default_factory=dict)


METHODS: Registry[MethodRecord] = Registry("method")


def register_method(record: MethodRecord) -> MethodRecord:
    """Add a method; refuses a name that is taken."""
    return METHODS.register(record.name)(record)


def table_order(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` in registration order (the paper's Table 1: baselines, MLC-NC, ablations)."""
    order = list(METHODS.registered())
    known = [m for m in order if m in names]
    return known + sorted(set(names) - set(known))


def display_name(name: str) -> str:
    """The method's name in tables (``CB-Focal``); the registry name for unknown ones."""
    return METHODS.get(name).display_name if name in METHODS else name


# --------------------------------------------------------------------------- options
def _defaults(options: type | None) -> dict[str, Any]:
    if options is None:
        return {}
    return {f.name: field_default(f) for f in dataclasses.fields(options)}


def method_defaults(name: str) -> dict[str, dict[str, Any]] | None:
    """``{"model": {option: default}, "loss": {...}}`` of method ``name``; None for a method
    registered with free-form options."""
    record = METHODS.get(name)
    if record.model_options is None and record.loss_options is None:
        return None
    return {"model": _defaults(record.model_options), "loss": _defaults(record.loss_options)}


def needs_num_samples(name: str) -> bool:
    """Whether method ``name`` needs the number of training images."""
    return METHODS.get(name).needs_num_samples


def _check_part(
    cfg: MethodConfig, part: str, options: type | None, given: Mapping[str, Any]
) -> dict[str, Any]:
    """``given`` validated against the ``options`` section, defaults filled in."""
    if options is None:
        return dict(given)
    names = [f.name for f in dataclasses.fields(options)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        allowed = ", ".join(sorted(names)) or "none"
        raise ConfigError(
            f"method {cfg.name!r}: unknown {part} option(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {allowed}{did_you_mean(unknown[0], names)}"
        )
    try:
        value = TypeAdapter(options).validate_python(dict(given))
    except ValidationError as error:
        raise ConfigError(describe_error(error, options, prefix=f"method.{part}")) from None
    return dataclasses.asdict(value)


def resolve_options(
    cfg: MethodConfig, data_name: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The method's model and loss options: its defaults <- the dataset's defaults <- the
    config's values, checked, with the dependent ones filled in (``MethodRecord.finalize``).
    Idempotent: resolving resolved options gives them back."""
    record = METHODS.get(cfg.name)
    data_loss = record.data_defaults.get(data_name or "", {})
    model = _check_part(cfg, "model", record.model_options, cfg.model)
    loss = _check_part(cfg, "loss", record.loss_options, {**data_loss, **cfg.loss})
    if record.finalize is not None:
        record.finalize(cfg, model, loss)
    return model, loss


def build_method(
    cfg: MethodConfig,
    num_classes: int,
    class_freq: np.ndarray,
    num_samples: int | None = None,
    data_name: str | None = None,
    *,
    train_labels: np.ndarray | None = None,
    epochs: int | None = None,
    class_names: tuple[str, ...] | list[str] | None = None,
    train_paths: tuple[str, ...] | list[str] | None = None,
) -> Method:
    """Build the named method for ``num_classes`` classes with training counts ``class_freq``.

    ``num_samples`` is the number of training images (N), for the methods that need it;
    ``data_name`` picks dataset-dependent defaults where the options do not set them;
    ``train_labels``, ``epochs`` and ``train_paths`` reach the methods that use them
    (``BuildRequest``).
    """
    class_freq = np.asarray(class_freq)
    if class_freq.shape != (num_classes,):
        raise ValueError(f"class_freq must have shape ({num_classes},), got {class_freq.shape}")
    record = METHODS.get(cfg.name)
    model, loss = resolve_options(cfg, data_name)
    names = tuple(class_names) if class_names is not None else None
    paths = tuple(str(p) for p in train_paths) if train_paths is not None else None
    request = BuildRequest(
        cfg, model, loss, num_classes, class_freq, num_samples, train_labels, epochs, names, paths
    )
    method = record.build(request)
    if cfg.sampler is not None:
        method.sampler = cfg.sampler
    return method


def check_method(
    cfg: MethodConfig,
    image_size: int,
    data_name: str | None = None,
    epochs: int | None = None,
    num_classes: int = 3,
) -> None:
    """Every check the method's builder and model make, without its weights or the data:
    the method built on random weights (``pretrained=False``) for ``num_classes``
    placeholder classes, then one image of ``image_size`` through its model
    (``check_input_size``). What ``mlcnc train --dry-run`` runs; checks that need the
    data's class count or the weights file's contents are made when those are read (a
    path-valued ``method.pretrained`` must exist as a file: ``check_pretrained_file``)."""
    import dataclasses as dc

    from mlcnc.models.backbone import check_pretrained_file
    from mlcnc.models.clip import placeholder_class_names

    check_pretrained_file(cfg.backbone, cfg.pretrained)
    names = placeholder_class_names(num_classes)
    try:
        method = build_method(
            dc.replace(cfg, pretrained=False), num_classes, np.ones(num_classes),
            num_samples=num_classes + 1, data_name=data_name, epochs=epochs, class_names=names,
        )  # fmt: skip
    except ConfigError:
        raise
    except ValueError as error:  # a builder's check of its options
        raise ConfigError(f"method {cfg.name}: {error}") from None
    check_input_size(method.model, cfg, image_size)


def check_input_size(model: nn.Module, cfg: MethodConfig, image_size: int) -> None:
    """One (1, 3, S, S) image through ``model`` in eval mode without gradient (the random
    state and the train / eval mode left as they were): a model that cannot read
    ``data.image_size`` images (a CLIP tower's fixed positional embedding) is refused in one
    line before training, not at its first step."""
    import torch

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=device, dtype=dtype))
    except (ValueError, RuntimeError) as error:
        text = str(error)
        if "out of memory" in text.lower() or "can't allocate memory" in text:
            raise  # not the model's input size: mlcnc.cli says what to lower
        detail = (text.strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            f"data.image_size={image_size}: method {cfg.name} with method.backbone="
            f"{cfg.backbone} cannot read {image_size}x{image_size} images: {detail}"
        ) from None
    finally:
        model.train(was_training)


def field_default(f: dataclasses.Field) -> Any:
    """The default of an options field (refuses a field without one)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"option {f.name} has no default")


@section
class NoOptions:
    """A loss without options."""


def method_table(names: Iterable[str] | None = None) -> list[str]:
    """The registered methods (or ``names`` of them) as markdown table rows, in table order:
    a header, its rule, then ``| `name` | display name | sampler | source |`` per method."""
    rows = ["| name | display name | sampler | source |", "|---|---|---|---|"]
    for name in table_order(list(METHODS.registered() if names is None else names)):
        record = METHODS.get(name)
        rows.append(f"| `{name}` | {record.display_name} | {record.sampler} | {record.source} |")
    return rows


def create_model(
    name: str,
    num_classes: int,
    *,
    backbone: str = "resnet50",
    pretrained: bool | str = False,
    recipe: RecipeName = "paper",
    **model_options: Any,
) -> nn.Module:
    """The model of registered method ``name`` for ``num_classes`` classes, its options
    (``model_options``) checked and completed as in a config's ``method.model``.

    Data statistics (class counts, co-occurrence) are not known here: the method's criterion
    is built on placeholder counts and dropped, ML-GCN gets an identity correlation (load a
    checkpoint, or use ``build_method`` with the training labels). ``mlcnc.models.create_mlcnc``
    builds MLC-NC from its constructor's arguments.
    """
    cfg = MethodConfig(
        name=name, backbone=backbone, pretrained=pretrained, recipe=recipe, model=model_options
    )
    return build_method(cfg, num_classes, np.ones(num_classes), num_samples=num_classes + 1).model
