"""Methods a config picks by name: each builds a model, its criterion and its sampler choice.

A method is what differs between the rows of the paper's Table 1; the backbone, data,
optimiser and epoch budget come from the rest of the config and are shared.

Registered methods (options of ``method.loss`` / ``method.model`` with their defaults, see
``method_defaults``; any other option name is an error that lists the allowed ones; an
ablation's fixed values are not options of it):

| name                | model                  | criterion (loss options)                          | sampler     |
|---------------------|------------------------|---------------------------------------------------|-------------|
| mlcnc               | MLC-NC                 | MLCNCLoss (its keyword options)                   | class_aware |
| mlcnc_no_fla        | MLC-NC                 | MLCNCLoss, fixed alpha=0, warmup_epochs=0         | class_aware |
| mlcnc_no_fpc        | MLC-NC                 | MLCNCLoss, fixed beta=0                           | class_aware |
| mlcnc_learnable_etf | MLC-NC, fixed classifier_trainable=True | MLCNCLoss                        | class_aware |
| erm                 | linear head            | BCE                                               | random      |
| rs                  | linear head            | BCE                                               | class_aware |
| rw                  | linear head            | BCE re-weighted (mode=sqrt_inv | inv)             | random      |
| focal               | linear head            | focal (gamma=2, alpha=None)                       | random      |
| cb_focal            | linear head            | class-balanced focal (beta=0.99, gamma=2, alpha)  | random      |
| ldam                | cosine head            | multi-label LDAM (max_margin=0.5, scale=30)       | random      |
| asl                 | linear head            | ASL (gamma_neg=4, gamma_pos=0, clip=0.05)         | random      |
| db                  | linear head            | DB without focal term (preset=voc, num_samples..) | class_aware |
| db_focal            | linear head            | DB-Focal (as db, plus gamma=2, balance_param=2)   | class_aware |
| two_way             | linear head            | two-way loss (tp=4, tn=1)                         | class_aware |

Linear-head model options: ``dropout`` (0.0) and ``classifier`` (``linear``; ``cosine`` for
LDAM). Samplers follow the benchmark's setting for each baseline: RS and DB are defined with
class-aware sampling; the two-way loss gets MLC-NC's sampler so it differs from MLC-NC only
in the representation. ``method.sampler`` overrides any of them.

Choices (fixed before any run, never tuned on test): RW weights w_c proportional to
n_c^-1/2 (``sqrt_inv``; ``inv`` gives n_c^-1), mean 1; CB-Focal beta 0.99 (the grid of the
class-balanced paper is 0.9 / 0.99 / 0.999); LDAM on a cosine classifier with s = 30, as
LDAM is defined on normalised features and weights.

"db_focal" is the DB repository's configuration (spec 7.4; ``focal=True``): re-balanced
weights, negative-tolerant regularisation and the focal term; "db" is the same without the
focal term (plain weighted BCE). Both take the per-dataset ``preset`` (``voc``: lambda 5,
mu 0.3; ``coco``: lambda 2, mu 0.2) and need the number of training images (``num_samples``,
from ``build_method`` or ``method.loss.num_samples``); ``mlcnc benchmark`` fills both in.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from torch import nn

from mlcnc.losses.base import Criterion
from mlcnc.registry import Registry

SamplerKind = Literal["random", "class_aware"]


@dataclass
class MethodConfig:
    """The ``method:`` part of a config.

    name:       a registered method (``mlcnc``, ``erm``, ...; see ``METHODS.names()``).
    backbone:   torchvision ResNet name or any timm model with spatial features.
    pretrained: True (the backbone's canonical ImageNet weights), False, or a local file.
    recipe:     ``paper`` or ``official`` (spec A2), for methods that have recipes.
    model:      extra keyword options for the model builder.
    loss:       extra keyword options for the criterion.
    sampler:    override of the method's own sampler choice (None keeps it).
    """

    name: str = "mlcnc"
    backbone: str = "resnet50"
    pretrained: bool | str = True
    recipe: str = "paper"
    model: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    sampler: SamplerKind | None = None


@dataclass
class Method:
    model: nn.Module
    criterion: Criterion
    sampler: SamplerKind


MethodBuilder = Callable[..., Method]
"""``builder(cfg, num_classes, class_freq) -> Method``; builders of the methods in
``needs_num_samples`` also take the keyword ``num_samples``."""

METHODS: Registry[MethodBuilder] = Registry("method")


def build_method(
    cfg: MethodConfig, num_classes: int, class_freq: np.ndarray, num_samples: int | None = None
) -> Method:
    """Build the named method for ``num_classes`` classes with training counts ``class_freq``.

    ``num_samples`` is the number of training images (N); it goes to the methods that need
    it (``needs_num_samples``: DB's prior-logit shift), the others do not take it.
    """
    class_freq = np.asarray(class_freq)
    if class_freq.shape != (num_classes,):
        raise ValueError(f"class_freq must have shape ({num_classes},), got {class_freq.shape}")
    builder = METHODS.get(cfg.name)
    extra = {"num_samples": num_samples} if needs_num_samples(cfg.name) else {}
    method = builder(cfg, num_classes, class_freq, **extra)
    if cfg.sampler is not None:
        method.sampler = cfg.sampler
    return method


OptionDefaults = dict[str, dict[str, Any]]
"""``{"model": {option: default}, "loss": {option: default}}``."""

_DECLARED: dict[str, Callable[[], OptionDefaults]] = {}
_NEEDS_NUM_SAMPLES: set[str] = set()


def method_defaults(name: str) -> OptionDefaults | None:
    """The ``method.model`` / ``method.loss`` options method ``name`` accepts, with defaults.

    None for a method registered without declaring them (its builder checks its own).
    """
    METHODS.get(name)  # a clear error for an unknown name
    declared = _DECLARED.get(name)
    return None if declared is None else declared()


def needs_num_samples(name: str) -> bool:
    """Whether method ``name`` needs the number of training images (``build_method``'s N)."""
    METHODS.get(name)
    return name in _NEEDS_NUM_SAMPLES


def method_options(
    cfg: MethodConfig, part: Literal["loss", "model"], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """``defaults`` updated with ``cfg.<part>``, refusing option names not in ``defaults``."""
    given = getattr(cfg, part)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        allowed = ", ".join(sorted(defaults)) or "none"
        raise ValueError(
            f"method {cfg.name!r}: unknown {part} option(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {allowed}"
        )
    return {**defaults, **given}


def _checked_options(cfg: MethodConfig) -> OptionDefaults:
    defaults = method_defaults(cfg.name)
    assert defaults is not None, f"method {cfg.name!r} declares no options"
    return {part: method_options(cfg, part, defaults[part]) for part in ("model", "loss")}


# --------------------------------------------------------------------------- MLC-NC
MLCNC_VARIANTS: dict[str, OptionDefaults] = {
    "mlcnc": {"model": {}, "loss": {}},
    # Without L_FLA: alpha = 0 and no warm-up (MLC-NC's warm-up trains L_FLA alone).
    "mlcnc_no_fla": {"model": {}, "loss": {"alpha": 0.0, "warmup_epochs": 0}},
    # Without L_FPC: beta = 0.
    "mlcnc_no_fpc": {"model": {}, "loss": {"beta": 0.0}},
    # A learnable classifier (initialised at the ETF) instead of the fixed one.
    "mlcnc_learnable_etf": {"model": {"classifier_trainable": True}, "loss": {}},
}
"""MLC-NC and its ablations: the options each one fixes (so they are not options of it)."""


def _keyword_defaults(fn: Callable[..., Any], exclude: set[str]) -> dict[str, Any]:
    """The keyword parameters of ``fn`` (minus ``exclude``) with their defaults."""
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if name not in exclude and p.default is not inspect.Parameter.empty
    }


def _mlcnc_defaults(fixed: OptionDefaults) -> OptionDefaults:
    """MLCNCHead's and MLCNCLoss's keyword options, less those the variant fixes."""
    from mlcnc.losses import MLCNCLoss
    from mlcnc.models.head import MLCNCHead

    model = _keyword_defaults(MLCNCHead.__init__, {"self", "in_features", "num_classes"})
    loss = _keyword_defaults(MLCNCLoss.__init__, {"self", "num_classes", "proj_dim", "recipe"})
    return {
        "model": {k: v for k, v in model.items() if k not in fixed["model"]},
        "loss": {k: v for k, v in loss.items() if k not in fixed["loss"]},
    }


def _register_mlcnc(name: str, fixed: OptionDefaults) -> None:
    _DECLARED[name] = lambda: _mlcnc_defaults(fixed)

    @METHODS.register(name)
    def build(cfg: MethodConfig, num_classes: int, class_freq: np.ndarray) -> Method:
        from mlcnc.losses import MLCNCLoss
        from mlcnc.models import create_model

        _checked_options(cfg)
        # Only the options given (and the fixed ones) are passed: the recipe fills the rest.
        model_options = {**cfg.model, **fixed["model"]}
        loss_options = {**cfg.loss, **fixed["loss"]}
        model = create_model(
            num_classes,
            backbone=cfg.backbone,
            pretrained=cfg.pretrained,
            recipe=cfg.recipe,
            **model_options,
        )
        criterion = MLCNCLoss(
            num_classes, proj_dim=model.proj_dim, recipe=cfg.recipe, **loss_options
        )
        return Method(model=model, criterion=criterion, sampler="class_aware")


for _name, _fixed in MLCNC_VARIANTS.items():
    _register_mlcnc(_name, _fixed)


# --------------------------------------------------------------------------- linear-head baselines
LINEAR_MODEL_OPTIONS: dict[str, Any] = {"dropout": 0.0, "classifier": "linear"}

CriterionFactory = Callable[..., Criterion]


def _register_linear(
    name: str,
    sampler: SamplerKind,
    loss: Mapping[str, Any],
    model: Mapping[str, Any] | None = None,
    needs_size: bool = False,
) -> Callable[[CriterionFactory], CriterionFactory]:
    """Register a linear-head method whose criterion is ``factory(class_freq, **loss options)``
    (``factory(class_freq, num_samples, **loss options)`` with ``needs_size``)."""

    def register(factory: CriterionFactory) -> CriterionFactory:
        _DECLARED[name] = lambda: {
            "model": {**LINEAR_MODEL_OPTIONS, **(model or {})},
            "loss": dict(loss),
        }
        if needs_size:
            _NEEDS_NUM_SAMPLES.add(name)

        @METHODS.register(name)
        def build(
            cfg: MethodConfig,
            num_classes: int,
            class_freq: np.ndarray,
            num_samples: int | None = None,
        ) -> Method:
            from mlcnc.models.linear import LinearHeadModel

            options = _checked_options(cfg)
            loss_options = options["loss"]
            if needs_size:
                size = loss_options.pop("num_samples") or num_samples
                if size is None:
                    raise ValueError(
                        f"method {name!r} needs the number of training images: pass "
                        "build_method(..., num_samples=N) or set method.loss.num_samples"
                    )
                criterion = factory(class_freq, int(size), **loss_options)
            else:
                criterion = factory(class_freq, **loss_options)
            head = LinearHeadModel(cfg.backbone, cfg.pretrained, num_classes, **options["model"])
            return Method(model=head, criterion=criterion, sampler=sampler)

        return factory

    return register


@_register_linear("rs", "class_aware", loss={})
@_register_linear("erm", "random", loss={})
def _bce(class_freq: np.ndarray) -> Criterion:
    from mlcnc.losses.baselines import BCECriterion

    return BCECriterion()


@_register_linear("rw", "random", loss={"mode": "sqrt_inv"})
def _rw(class_freq: np.ndarray, mode: str) -> Criterion:
    from mlcnc.losses.baselines import ReweightedBCECriterion

    return ReweightedBCECriterion(class_freq, mode)


@_register_linear("focal", "random", loss={"gamma": 2.0, "alpha": None})
def _focal(class_freq: np.ndarray, gamma: float, alpha: float | None) -> Criterion:
    from mlcnc.losses.baselines import FocalCriterion

    return FocalCriterion(gamma, alpha)


@_register_linear("cb_focal", "random", loss={"beta": 0.99, "gamma": 2.0, "alpha": None})
def _cb_focal(class_freq: np.ndarray, beta: float, gamma: float, alpha: float | None) -> Criterion:
    from mlcnc.losses.baselines import ClassBalancedFocalCriterion

    return ClassBalancedFocalCriterion(class_freq, beta, gamma, alpha)


# LDAM: its normalised (cosine) classifier, scale s = 30, margins up to 0.5.
@_register_linear(
    "ldam", "random", loss={"max_margin": 0.5, "scale": 30.0}, model={"classifier": "cosine"}
)
def _ldam(class_freq: np.ndarray, max_margin: float, scale: float) -> Criterion:
    from mlcnc.losses.baselines import LDAMCriterion

    return LDAMCriterion(class_freq, max_margin, scale)


@_register_linear("asl", "random", loss={"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05})
def _asl(class_freq: np.ndarray, gamma_neg: float, gamma_pos: float, clip: float) -> Criterion:
    from mlcnc.losses.baselines import AsymmetricCriterion

    return AsymmetricCriterion(gamma_neg, gamma_pos, clip)


DB_OPTIONS: dict[str, Any] = {
    "preset": "voc",
    "map_alpha": None,
    "map_beta": None,
    "map_mu": None,
    "neg_scale": None,
    "init_bias": None,
    "num_samples": None,
}
"""DB's options: a per-dataset ``preset`` (``voc`` or ``coco``, spec 7.4) whose values the
other options override when set; ``num_samples`` overrides the training-set size."""


def _db_criterion(
    class_freq: np.ndarray, num_samples: int, preset: str, focal: bool, **options: Any
) -> Criterion:
    from mlcnc.losses.baselines import DB_PRESETS, DistributionBalancedCriterion

    if preset not in DB_PRESETS:
        raise ValueError(f"unknown DB preset {preset!r}; choose one of: {', '.join(DB_PRESETS)}")
    fields = {f.name for f in dataclasses.fields(DB_PRESETS[preset])}
    changed = {k: options.pop(k) for k in fields if options.get(k) is not None}
    for k in fields:
        options.pop(k, None)
    params = dataclasses.replace(DB_PRESETS[preset], **changed)
    return DistributionBalancedCriterion(class_freq, num_samples, params, focal=focal, **options)


@_register_linear("db", "class_aware", loss=DB_OPTIONS, needs_size=True)
def _db(class_freq: np.ndarray, num_samples: int, **options: Any) -> Criterion:
    return _db_criterion(class_freq, num_samples, focal=False, **options)


@_register_linear(
    "db_focal",
    "class_aware",
    loss={**DB_OPTIONS, "gamma": 2.0, "balance_param": 2.0},
    needs_size=True,
)
def _db_focal(class_freq: np.ndarray, num_samples: int, **options: Any) -> Criterion:
    return _db_criterion(class_freq, num_samples, focal=True, **options)


@_register_linear("two_way", "class_aware", loss={"tp": 4.0, "tn": 1.0})
def _two_way(class_freq: np.ndarray, tp: float, tn: float) -> Criterion:
    from mlcnc.losses.baselines import TwoWayCriterion

    return TwoWayCriterion(tp, tn)
