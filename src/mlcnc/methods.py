"""Methods a config picks by name: each builds a model, its criterion and its sampler choice.

A method is what differs between the rows of the paper's Table 1; the backbone, data,
optimiser and epoch budget come from the rest of the config and are shared.

Registered methods (options of ``method.loss`` / ``method.model`` with their defaults;
any other option name is an error that lists the allowed ones):

| name                | model                  | criterion (loss options)                          | sampler     |
|---------------------|------------------------|---------------------------------------------------|-------------|
| mlcnc               | MLC-NC                 | MLCNCLoss (its keyword options)                   | class_aware |
| mlcnc_no_fla        | MLC-NC                 | MLCNCLoss, alpha=0, warmup_epochs=0               | class_aware |
| mlcnc_no_fpc        | MLC-NC                 | MLCNCLoss, beta=0                                 | class_aware |
| mlcnc_learnable_etf | MLC-NC, trainable ETF  | MLCNCLoss                                         | class_aware |
| erm                 | linear head            | BCE                                               | random      |
| rs                  | linear head            | BCE                                               | class_aware |
| rw                  | linear head            | BCE re-weighted (mode=sqrt_inv | inv)             | random      |
| focal               | linear head            | focal (gamma=2, alpha=None)                       | random      |
| cb_focal            | linear head            | class-balanced focal (beta=0.99, gamma=2, alpha)  | random      |
| ldam                | cosine head            | multi-label LDAM (max_margin=0.5, scale=30)       | random      |
| asl                 | linear head            | ASL (gamma_neg=4, gamma_pos=0, clip=0.05)         | random      |
| db                  | linear head            | DB without focal term (preset=voc, ...)           | class_aware |
| db_focal            | linear head            | DB-Focal (preset=voc, ..., gamma=2, balance=2)    | class_aware |
| two_way             | linear head            | two-way loss (tp=4, tn=1)                         | class_aware |

Linear-head model options: ``dropout`` (0.0) and ``classifier`` (``linear``; ``cosine`` for
LDAM). Samplers follow the benchmark's setting for each baseline: RS and DB are defined with
class-aware sampling; the two-way loss gets MLC-NC's sampler so it differs from MLC-NC only
in the representation. ``method.sampler`` overrides any of them.

"db" and "db_focal" follow the DB repository (spec 7.4): its config sets ``focal=True``, so
the full method is DB-Focal; "db" is the same re-balanced weight and negative-tolerant
regularisation on plain BCE (``focal=False``), as in the DB paper's ablation row.
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
"""``builder(cfg, num_classes, class_freq) -> Method``; a builder that also needs the number
of training images declares a keyword parameter ``num_samples``."""

METHODS: Registry[MethodBuilder] = Registry("method")


def build_method(
    cfg: MethodConfig, num_classes: int, class_freq: np.ndarray, num_samples: int | None = None
) -> Method:
    """Build the named method for ``num_classes`` classes with training counts ``class_freq``.

    ``num_samples`` is the number of training images (N); DB's prior-logit shift needs it,
    the other methods ignore it.
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


def needs_num_samples(name: str) -> bool:
    """Whether method ``name``'s builder takes the number of training images."""
    return "num_samples" in inspect.signature(METHODS.get(name)).parameters


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


# --------------------------------------------------------------------------- MLC-NC
def _keyword_defaults(fn: Callable[..., Any], exclude: set[str]) -> dict[str, Any]:
    """The keyword parameters of ``fn`` (minus ``exclude``) with their defaults."""
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if name not in exclude and p.default is not inspect.Parameter.empty
    }


def _mlcnc_method(
    cfg: MethodConfig,
    num_classes: int,
    model_defaults: Mapping[str, Any] | None = None,
    loss_defaults: Mapping[str, Any] | None = None,
) -> Method:
    """MLC-NC with the given option defaults (the ablations); ``cfg`` options win."""
    from mlcnc.losses import MLCNCLoss
    from mlcnc.models import create_model
    from mlcnc.models.head import MLCNCHead

    model_allowed = _keyword_defaults(MLCNCHead.__init__, {"self", "in_features", "num_classes"})
    loss_allowed = _keyword_defaults(
        MLCNCLoss.__init__, {"self", "num_classes", "proj_dim", "recipe"}
    )
    # Only names given (by the ablation or the config) are passed: the recipe fills the rest.
    model_given = method_options(cfg, "model", model_allowed)
    loss_given = method_options(cfg, "loss", loss_allowed)
    model_options = {**(model_defaults or {}), **{k: model_given[k] for k in cfg.model}}
    loss_options = {**(loss_defaults or {}), **{k: loss_given[k] for k in cfg.loss}}
    model = create_model(
        num_classes,
        backbone=cfg.backbone,
        pretrained=cfg.pretrained,
        recipe=cfg.recipe,
        **model_options,
    )
    criterion = MLCNCLoss(num_classes, proj_dim=model.proj_dim, recipe=cfg.recipe, **loss_options)
    return Method(model=model, criterion=criterion, sampler="class_aware")


@METHODS.register("mlcnc")
def _mlcnc(cfg: MethodConfig, num_classes: int, class_freq: np.ndarray) -> Method:
    return _mlcnc_method(cfg, num_classes)


@METHODS.register("mlcnc_no_fla")
def _mlcnc_no_fla(cfg: MethodConfig, num_classes: int, class_freq: np.ndarray) -> Method:
    """Without L_FLA: alpha = 0, and no FLA-only warm-up (it would train with L_FLA alone)."""
    return _mlcnc_method(cfg, num_classes, loss_defaults={"alpha": 0.0, "warmup_epochs": 0})


@METHODS.register("mlcnc_no_fpc")
def _mlcnc_no_fpc(cfg: MethodConfig, num_classes: int, class_freq: np.ndarray) -> Method:
    """Without L_FPC: beta = 0."""
    return _mlcnc_method(cfg, num_classes, loss_defaults={"beta": 0.0})


@METHODS.register("mlcnc_learnable_etf")
def _mlcnc_learnable_etf(cfg: MethodConfig, num_classes: int, class_freq: np.ndarray) -> Method:
    """A learnable classifier (initialised at the ETF) instead of the fixed one."""
    return _mlcnc_method(cfg, num_classes, model_defaults={"classifier_trainable": True})


# --------------------------------------------------------------------------- linear-head baselines
LINEAR_MODEL_OPTIONS: dict[str, Any] = {"dropout": 0.0, "classifier": "linear"}


def _linear_method(
    cfg: MethodConfig,
    num_classes: int,
    criterion: Criterion,
    sampler: SamplerKind,
    model_defaults: Mapping[str, Any] | None = None,
) -> Method:
    from mlcnc.models.linear import LinearHeadModel

    options = method_options(cfg, "model", {**LINEAR_MODEL_OPTIONS, **(model_defaults or {})})
    model = LinearHeadModel(cfg.backbone, cfg.pretrained, num_classes, **options)
    return Method(model=model, criterion=criterion, sampler=sampler)


def _register_bce(name: str, sampler: SamplerKind) -> None:
    @METHODS.register(name)
    def build(cfg: MethodConfig, num_classes: int, class_freq: np.ndarray) -> Method:
        from mlcnc.losses.baselines import BCECriterion

        method_options(cfg, "loss", {})
        return _linear_method(cfg, num_classes, BCECriterion(), sampler)


_register_bce("erm", "random")
_register_bce("rs", "class_aware")


@METHODS.register("rw")
def _rw(cfg: MethodConfig, num_classes: int, class_freq: np.ndarray) -> Method:
    from mlcnc.losses.baselines import ReweightedBCECriterion

    options = method_options(cfg, "loss", {"mode": "sqrt_inv"})
    return _linear_method(cfg, num_classes, ReweightedBCECriterion(class_freq, **options), "random")


@METHODS.register("focal")
def _focal(cfg: MethodConfig, num_classes: int, class_freq: np.ndarray) -> Method:
    from mlcnc.losses.baselines import FocalCriterion

    options = method_options(cfg, "loss", {"gamma": 2.0, "alpha": None})
    return _linear_method(cfg, num_classes, FocalCriterion(**options), "random")


@METHODS.register("cb_focal")
def _cb_focal(cfg: MethodConfig, num_classes: int, class_freq: np.ndarray) -> Method:
    from mlcnc.losses.baselines import ClassBalancedFocalCriterion

    options = method_options(cfg, "loss", {"beta": 0.99, "gamma": 2.0, "alpha": None})
    criterion = ClassBalancedFocalCriterion(class_freq, **options)
    return _linear_method(cfg, num_classes, criterion, "random")


@METHODS.register("ldam")
def _ldam(cfg: MethodConfig, num_classes: int, class_freq: np.ndarray) -> Method:
    """LDAM's normalised (cosine) classifier and scale s = 30, margins up to 0.5."""
    from mlcnc.losses.baselines import LDAMCriterion

    options = method_options(cfg, "loss", {"max_margin": 0.5, "scale": 30.0})
    criterion = LDAMCriterion(class_freq, **options)
    return _linear_method(cfg, num_classes, criterion, "random", {"classifier": "cosine"})


@METHODS.register("asl")
def _asl(cfg: MethodConfig, num_classes: int, class_freq: np.ndarray) -> Method:
    from mlcnc.losses.baselines import AsymmetricCriterion

    options = method_options(cfg, "loss", {"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05})
    return _linear_method(cfg, num_classes, AsymmetricCriterion(**options), "random")


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


def _register_db(name: str, focal: bool) -> None:
    extra = {"gamma": 2.0, "balance_param": 2.0} if focal else {}

    @METHODS.register(name)
    def build(
        cfg: MethodConfig,
        num_classes: int,
        class_freq: np.ndarray,
        num_samples: int | None = None,
    ) -> Method:
        from mlcnc.losses.baselines import DB_PRESETS, DistributionBalancedCriterion

        options = method_options(cfg, "loss", {**DB_OPTIONS, **extra})
        preset = options.pop("preset")
        if preset not in DB_PRESETS:
            raise ValueError(
                f"method {name!r}: unknown DB preset {preset!r}; choose one of: {', '.join(DB_PRESETS)}"
            )
        size = options.pop("num_samples") or num_samples
        if size is None:
            raise ValueError(
                f"method {name!r} needs the number of training images (DB's prior-logit shift): "
                "pass build_method(..., num_samples=N) or set method.loss.num_samples"
            )
        overrides = {
            k: options.pop(k) for k in list(options) if k in DB_PRESETS[preset].__dataclass_fields__
        }
        params = dataclasses.replace(
            DB_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}
        )
        criterion = DistributionBalancedCriterion(class_freq, size, params, focal=focal, **options)
        return _linear_method(cfg, num_classes, criterion, "class_aware")


_register_db("db", focal=False)
_register_db("db_focal", focal=True)


@METHODS.register("two_way")
def _two_way(cfg: MethodConfig, num_classes: int, class_freq: np.ndarray) -> Method:
    from mlcnc.losses.baselines import TwoWayCriterion

    options = method_options(cfg, "loss", {"tp": 4.0, "tn": 1.0})
    return _linear_method(cfg, num_classes, TwoWayCriterion(**options), "class_aware")
