"""Methods a config picks by name: one registered record per method.

A method is what differs between the rows of the paper's Table 1; the backbone, data,
optimiser and epoch budget come from the rest of the config and are shared. Its record
(``MethodRecord``) holds everything about it in one place: its builder, its model and loss
options as typed structures with their defaults (and where each default comes from), its
sampler, its display name, and what it needs from the data (class counts, the training-set
size, per-dataset presets such as DB's). ``resolve_options`` fills a config's options from
the record, so ``mlcnc config show``, ``train``, ``benchmark`` and ``evaluate`` all see the
same values.

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
| db                  | linear head            | DB without focal term (preset by dataset)         | class_aware |
| db_focal            | linear head            | DB-Focal (as db, plus gamma=2, balance_param=2)   | class_aware |
| two_way             | linear head            | two-way loss (tp=4, tn=1)                         | class_aware |

Samplers follow the benchmark's setting for each baseline: RS and DB are defined with
class-aware sampling; the two-way loss gets MLC-NC's sampler so it differs from MLC-NC only
in the representation. ``method.sampler`` overrides any of them.

Choices (fixed before any run, never tuned on test): RW weights w_c proportional to
n_c^-1/2 (``sqrt_inv``; ``inv`` gives n_c^-1), mean 1; CB-Focal beta 0.99 (the grid of the
class-balanced paper is 0.9 / 0.99 / 0.999); LDAM on a cosine classifier with s = 30, as
LDAM is defined on normalised features and weights. "db_focal" is the DB repository's
configuration (spec 7.4; ``focal=True``); "db" is the same without the focal term. Both take
the per-dataset ``preset`` (``voc``: lambda 5, mu 0.3; ``coco``: lambda 2, mu 0.2), chosen
from ``data.name`` unless given, and the number of training images (``num_samples``, from
the training split unless given).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError
from torch import nn

from mlcnc.losses.base import Criterion
from mlcnc.recipes import RecipeName, get_recipe
from mlcnc.registry import Registry
from mlcnc.schema import (
    Bool,
    ConfigError,
    Fraction,
    Int,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Str,
    describe_error,
    did_you_mean,
    section,
)

SamplerKind = Literal["random", "class_aware", "paired_reversed", "paired_class_aware"]
"""``random`` / ``class_aware`` draw one image per sample; the paired kinds draw two (a
uniform one and a re-balanced one: reversed (BBN) or class-aware (URS))."""


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
    epochs the training epochs (BBN's cumulative learning).
    """

    cfg: MethodConfig
    model: dict[str, Any]
    loss: dict[str, Any]
    num_classes: int
    class_freq: np.ndarray
    num_samples: int | None
    train_labels: np.ndarray | None = None
    epochs: int | None = None


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
    return {f.name: _field_default(f) for f in dataclasses.fields(options)}


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"option {f.name} has no default")


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
) -> Method:
    """Build the named method for ``num_classes`` classes with training counts ``class_freq``.

    ``num_samples`` is the number of training images (N), for the methods that need it;
    ``data_name`` picks dataset-dependent defaults where the options do not set them;
    ``train_labels`` and ``epochs`` reach the methods that use them (``BuildRequest``).
    """
    class_freq = np.asarray(class_freq)
    if class_freq.shape != (num_classes,):
        raise ValueError(f"class_freq must have shape ({num_classes},), got {class_freq.shape}")
    record = METHODS.get(cfg.name)
    model, loss = resolve_options(cfg, data_name)
    request = BuildRequest(
        cfg, model, loss, num_classes, class_freq, num_samples, train_labels, epochs
    )
    method = record.build(request)
    if cfg.sampler is not None:
        method.sampler = cfg.sampler
    return method


# --------------------------------------------------------------------------- MLC-NC
@section
class MLCNCModelOptions:
    """MLCNCHead's options (spec section 1; defaults of the authors' code, spec 9).

    classifier_trainable: None = the recipe's choice (``mlcnc.recipes``).
    """

    embed_dim: PositiveInt = 768
    num_heads: PositiveInt = 8
    attn_dropout: Fraction = 0.1
    proj_dim: PositiveInt = 20
    alpha_att: float = 1.0
    classifier_trainable: Bool | None = None
    etf_seed: Int = 0


@section
class MLCNCLossOptions:
    """MLCNCLoss's options (paper section 4.1 and spec 2.4: alpha 0.5, beta 0.1, tau 0.5,
    Tp 4, Tn 1, 5 warm-up epochs). legacy_warmup / prototype_mode: None = the recipe's."""

    alpha: NonNegativeFloat = 0.5
    beta: NonNegativeFloat = 0.1
    tau1: PositiveFloat = 0.5
    tau2: PositiveFloat | None = None
    tp: PositiveFloat = 4.0
    tn: PositiveFloat = 1.0
    warmup_epochs: NonNegativeInt = 5
    legacy_warmup: Bool | None = None
    prototype_mode: Literal["per_epoch", "cumulative"] | None = None
    fpc_reduction: Literal["positive_mean", "per_sample"] = "positive_mean"


def _without(options: type, fixed: Mapping[str, Any], name: str) -> type:
    """A copy of the ``options`` section without the fields an ablation fixes."""
    kept = [
        (f.name, f.type, dataclasses.field(default=_field_default(f)))
        for f in dataclasses.fields(options)
        if f.name not in fixed
    ]
    plain = dataclasses.make_dataclass(name, kept)
    plain.__module__ = __name__
    return section(plain)


def _finalize_mlcnc() -> Callable[[MethodConfig, dict[str, Any], dict[str, Any]], None]:
    """Fill the switches left to the recipe (None) with the recipe's values."""

    def finalize(cfg: MethodConfig, model: dict[str, Any], loss: dict[str, Any]) -> None:
        recipe = get_recipe(cfg.recipe)
        switches = (
            (model, "classifier_trainable", recipe.classifier_trainable),
            (loss, "legacy_warmup", recipe.legacy_warmup),
            (loss, "prototype_mode", recipe.prototype_mode),
        )
        for options, key, value in switches:
            if key in options and options[key] is None:
                options[key] = value

    return finalize


def _register_mlcnc(name: str, display: str, fixed: Mapping[str, Mapping[str, Any]]) -> None:
    model_options = (
        _without(MLCNCModelOptions, fixed["model"], f"{name}_model")
        if fixed["model"]
        else MLCNCModelOptions
    )
    loss_options = (
        _without(MLCNCLossOptions, fixed["loss"], f"{name}_loss")
        if fixed["loss"]
        else MLCNCLossOptions
    )

    def build(request: BuildRequest) -> Method:
        from mlcnc.losses import MLCNCLoss
        from mlcnc.models import create_model

        cfg = request.cfg
        model = create_model(
            request.num_classes,
            backbone=cfg.backbone,
            pretrained=cfg.pretrained,
            recipe=cfg.recipe,
            **{**request.model, **fixed["model"]},
        )
        criterion = MLCNCLoss(
            request.num_classes,
            proj_dim=model.proj_dim,
            recipe=cfg.recipe,
            **{**request.loss, **fixed["loss"]},
        )
        return Method(model=model, criterion=criterion, sampler="class_aware")

    register_method(
        MethodRecord(
            name=name,
            display_name=display,
            build=build,
            sampler="class_aware",
            model_options=model_options,
            loss_options=loss_options,
            finalize=_finalize_mlcnc(),
            source="Tao et al., AAAI 2025; defaults of the authors' code (spec 9)",
        )
    )


# --------------------------------------------------------------------------- linear-head baselines
@section
class LinearModelOptions:
    """The linear head on the pooled backbone feature (``models.linear``). DB's recipe sets
    neck_dim 256, dropout 0.5, frozen_stages 1, norm_eval, classifier_init_std 0.01
    (``configs/voc_lt_db.yaml``); frozen_stages / norm_eval need a torchvision ResNet."""

    dropout: Fraction = 0.0
    classifier: Literal["linear", "cosine"] = "linear"
    neck_dim: PositiveInt | None = None
    frozen_stages: Annotated[int, Field(ge=-1, le=4)] = -1
    norm_eval: Bool = False
    freeze_norm_affine: Bool = False
    classifier_init_std: PositiveFloat | None = None


@section
class CosineModelOptions(LinearModelOptions):
    """LDAM's head: a normalised (cosine) classifier (LDAM is defined on unit vectors)."""

    classifier: Literal["linear", "cosine"] = "cosine"


@section
class NoOptions:
    """A loss without options."""


@section
class ReweightOptions:
    """RW: w_c proportional to n_c^-1/2 (``sqrt_inv``) or n_c^-1 (``inv``), mean 1."""

    mode: Literal["sqrt_inv", "inv"] = "sqrt_inv"


@section
class FocalOptions:
    """Focal loss (Lin et al., ICCV 2017): gamma 2, no alpha balancing."""

    gamma: NonNegativeFloat = 2.0
    alpha: Fraction | None = None


@section
class ClassBalancedFocalOptions:
    """CB-Focal (Cui et al., CVPR 2019) as the LT-MLC benchmark's reference computes it (DB's
    ResampleLoss with reweight_func='CB': per-sample weights, beta 0.9, ``average_w``)."""

    beta: Annotated[float, Field(ge=0, lt=1)] = 0.9
    gamma: NonNegativeFloat = 2.0
    mode: Literal["average_w", "by_class", "average_n", "min_n"] = "average_w"
    balance_param: PositiveFloat = 2.0


@section
class LDAMOptions:
    """LDAM (Cao et al., NeurIPS 2019): margins up to 0.5, scale s = 30 (their code)."""

    max_margin: PositiveFloat = 0.5
    scale: PositiveFloat = 30.0


@section
class AsymmetricOptions:
    """ASL (Ridnik et al., ICCV 2021): the authors' training script's gamma_neg 4,
    gamma_pos 0, clip 0.05."""

    gamma_neg: NonNegativeFloat = 4.0
    gamma_pos: NonNegativeFloat = 0.0
    clip: Fraction = 0.05
    eps: PositiveFloat = 1e-8
    detach_focal_weight: Bool = True
    reduction: Literal["sum", "mean"] = "sum"


@section
class MFMOptions:
    """MFM, COMIC's multi-focal modifier (``losses/mfm.py``; COMIC's VOC config)."""

    gamma_neg: NonNegativeFloat = 3.0
    gamma_pos: NonNegativeFloat = 0.0
    clip: Fraction = 0.05
    class_neg_scale: PositiveFloat = 1.2
    weight_power: PositiveFloat = 1.0 / 3.0
    eps: PositiveFloat = 1e-8
    detach_focal_weight: Bool = True
    reduction: Literal["sum", "mean"] = "sum"


@section
class BBNModelOptions:
    """BBN (Zhou et al., CVPR 2020): the mixed features doubled as BBN's code does, alpha 0.5
    at test time; alpha_epochs None = the run's optim.epochs. Needs a torchvision ResNet or a
    timm EfficientNet-family model."""

    feature_scale: PositiveFloat = 2.0
    test_alpha: Fraction = 0.5
    alpha_epochs: PositiveInt | None = None


@section
class MLGCNModelOptions:
    """ML-GCN (Chen et al., CVPR 2019): tau 0.4, p 0.2 (Eq. 8 as corrected in their README),
    1024 hidden, LeakyReLU 0.2, max pooling; node features one-hot (no word vectors can be
    downloaded), ``etf``, or a C x d .npy / .txt / .csv file of class-name embeddings."""

    tau: Fraction = 0.4
    p: Fraction = 0.2
    self_weight: Fraction | None = None
    node_features: Str = "onehot"
    hidden_dim: PositiveInt = 1024
    negative_slope: NonNegativeFloat = 0.2
    pooling: Literal["max", "avg"] = "max"


@section
class URSModelOptions:
    """URS (Guo and Wang, CVPR 2021): logit compensation on (see ``models/urs.py`` for what
    the paper leaves open). Needs a torchvision ResNet or a timm EfficientNet-family model."""

    compensation: Bool = True


@section
class URSLossOptions:
    """URS's Eq. (1): lambda 0.1 for the cross-branch consistency (a documented choice)."""

    consistency_weight: NonNegativeFloat = 0.1
    consistency: Str = "mse_prob"


@section
class DBOptions:
    """DB (Wu et al., ECCV 2020; DB repository's configs, spec 7.4). ``preset`` gives the
    per-dataset values (voc or coco); set values override it. num_samples: None = the
    training split's size."""

    preset: Literal["voc", "coco"] = "voc"
    map_alpha: float | None = None
    map_beta: float | None = None
    map_mu: float | None = None
    neg_scale: PositiveFloat | None = None
    init_bias: float | None = None
    num_samples: PositiveInt | None = None


@section
class DBFocalOptions(DBOptions):
    """DB-Focal: DB plus the focal term (gamma 2, balance_param 2; DB's configs)."""

    gamma: NonNegativeFloat = 2.0
    balance_param: PositiveFloat = 2.0


@section
class TwoWayOptions:
    """The two-way loss (Kobayashi, CVPR 2023): Tp 4, Tn 1."""

    tp: PositiveFloat = 4.0
    tn: PositiveFloat = 1.0


DB_RECIPE = {"voc_lt": "voc_lt_db", "coco_lt": "coco_lt_db"}
"""The DB paper's recipe (spec 7.5), published for DB, DB-Focal and CB-Focal on both
benchmarks."""
MLGCN_RECIPE = {"voc_lt": "voc_lt_mlgcn", "coco_lt": "coco_lt_mlgcn"}
"""ML-GCN's own multi-label recipe (published for VOC 2007 / MS-COCO), on both benchmarks."""
ASL_RECIPE = {"voc_lt": "voc_lt_asl", "coco_lt": "coco_lt_asl"}
"""ASL's own multi-label recipe (published for MS-COCO, ``train.py``), on both benchmarks."""

DB_PRESET_OF_DATA: dict[str, dict[str, Any]] = {
    "voc_lt": {"preset": "voc"},
    "coco_lt": {"preset": "coco"},
}
"""DB's per-dataset parameters (spec 7.4) for each benchmark; other data take ``voc``."""


def _finalize_db(cfg: MethodConfig, model: dict[str, Any], loss: dict[str, Any]) -> None:
    """Write the preset's values into the options that are not set."""
    from mlcnc.losses.baselines import DB_PRESETS

    preset = dataclasses.asdict(DB_PRESETS[loss["preset"]])
    for key, value in preset.items():
        if loss.get(key) is None:
            loss[key] = value


CriterionFactory = Callable[[BuildRequest], Criterion]


def _register_linear(
    name: str,
    display: str,
    sampler: SamplerKind,
    loss_options: type,
    criterion: CriterionFactory,
    *,
    model_options: type = LinearModelOptions,
    source: str = "",
    db: bool = False,
    published: Mapping[str, str] | None = None,
) -> None:
    def build(request: BuildRequest) -> Method:
        from mlcnc.models.linear import LinearHeadModel

        head = LinearHeadModel(
            request.cfg.backbone, request.cfg.pretrained, request.num_classes, **request.model
        )
        return Method(model=head, criterion=criterion(request), sampler=sampler)

    register_method(
        MethodRecord(
            name=name,
            display_name=display,
            build=build,
            sampler=sampler,
            model_options=model_options,
            loss_options=loss_options,
            data_defaults=DB_PRESET_OF_DATA if db else {},
            finalize=_finalize_db if db else None,
            needs_num_samples=db,
            source=source,
            published_configs=published or {},
        )
    )


def _bce(request: BuildRequest) -> Criterion:
    from mlcnc.losses.baselines import BCECriterion

    return BCECriterion()


def _rw(request: BuildRequest) -> Criterion:
    from mlcnc.losses.baselines import ReweightedBCECriterion

    return ReweightedBCECriterion(request.class_freq, **request.loss)


def _focal(request: BuildRequest) -> Criterion:
    from mlcnc.losses.baselines import FocalCriterion

    return FocalCriterion(**request.loss)


def _cb_focal(request: BuildRequest) -> Criterion:
    from mlcnc.losses.baselines import ClassBalancedFocalCriterion

    return ClassBalancedFocalCriterion(request.class_freq, **request.loss)


def _ldam(request: BuildRequest) -> Criterion:
    from mlcnc.losses.baselines import LDAMCriterion

    return LDAMCriterion(request.class_freq, **request.loss)


def _asl(request: BuildRequest) -> Criterion:
    from mlcnc.losses.baselines import AsymmetricCriterion

    return AsymmetricCriterion(**request.loss)


def _db_criterion(focal: bool) -> CriterionFactory:
    def make(request: BuildRequest) -> Criterion:
        from mlcnc.losses.baselines import DBParams, DistributionBalancedCriterion

        options = dict(request.loss)
        size = options.pop("num_samples") or request.num_samples
        if size is None:
            raise ConfigError(
                f"method {request.cfg.name!r} needs the number of training images: pass "
                "build_method(..., num_samples=N) or set method.loss.num_samples"
            )
        options.pop("preset")
        params = DBParams(**{f.name: options.pop(f.name) for f in dataclasses.fields(DBParams)})
        return DistributionBalancedCriterion(
            request.class_freq, int(size), params, focal=focal, **options
        )

    return make


def _two_way(request: BuildRequest) -> Criterion:
    from mlcnc.losses.baselines import TwoWayCriterion

    return TwoWayCriterion(**request.loss)


def _mfm(request: BuildRequest) -> Criterion:
    from mlcnc.data.cooccurrence import cooccurrence_counts
    from mlcnc.losses.mfm import MultiFocalModifierCriterion

    counts = (
        cooccurrence_counts(request.train_labels)
        if request.train_labels is not None
        else np.zeros((request.num_classes, request.num_classes))  # restored from a checkpoint
    )
    return MultiFocalModifierCriterion(request.class_freq, counts, **request.loss)


def _build_bbn(request: BuildRequest) -> Method:
    from mlcnc.models.bbn import BBNCriterion, BBNModel

    options = dict(request.model)
    alpha_epochs = options.pop("alpha_epochs") or request.epochs or 1
    model = BBNModel(
        request.num_classes,
        alpha_epochs,
        backbone=request.cfg.backbone,
        pretrained=request.cfg.pretrained,
        **options,
    )
    return Method(model=model, criterion=BBNCriterion(), sampler="paired_reversed")


def _build_mlgcn(request: BuildRequest) -> Method:
    from mlcnc.losses.baselines import BCECriterion
    from mlcnc.models.mlgcn import MLGCNModel, mlgcn_correlation

    options = dict(request.model)
    graph = {k: options.pop(k) for k in ("tau", "p", "self_weight")}
    if request.train_labels is not None:
        correlation = mlgcn_correlation(request.train_labels, **graph)
    else:  # a trained model is rebuilt: its checkpoint restores the adjacency buffer
        correlation = np.eye(request.num_classes)
    model = MLGCNModel(
        request.num_classes,
        correlation,
        backbone=request.cfg.backbone,
        pretrained=request.cfg.pretrained,
        **options,
    )
    return Method(model=model, criterion=BCECriterion(), sampler="random")


def _build_urs(request: BuildRequest) -> Method:
    from mlcnc.models.urs import URSCriterion, URSModel

    model = URSModel(
        request.num_classes,
        backbone=request.cfg.backbone,
        pretrained=request.cfg.pretrained,
        **request.model,
    )
    return Method(model=model, criterion=URSCriterion(**request.loss), sampler="paired_class_aware")


# Registration order is the paper's Table 1 order: baselines, then MLC-NC and its ablations.
_register_linear("erm", "ERM", "random", NoOptions, _bce, source="plain BCE")
_register_linear("rs", "RS", "class_aware", NoOptions, _bce, source="BCE, class-aware sampling")
_register_linear(
    "rw", "RW", "random", ReweightOptions, _rw, source="BCE, inverse-frequency weights"
)
_register_linear("focal", "Focal", "random", FocalOptions, _focal, source="Lin et al., ICCV 2017")
_register_linear(
    "cb_focal", "CB-Focal", "random", ClassBalancedFocalOptions, _cb_focal,
    source="Cui et al., CVPR 2019; DB repository mllt/models/losses/resample_loss.py (CB)",
    published=DB_RECIPE,
)  # fmt: skip
_register_linear(
    "ldam", "LDAM", "random", LDAMOptions, _ldam, model_options=CosineModelOptions,
    source="Cao et al., NeurIPS 2019 (multi-label form)",
)  # fmt: skip
register_method(
    MethodRecord(
        name="mlgcn", display_name="ML-GCN", build=_build_mlgcn, sampler="random",
        model_options=MLGCNModelOptions, loss_options=NoOptions,
        source="Chen et al., CVPR 2019; megvii-research/ML-GCN (gen_A, gen_adj)",
        published_configs=MLGCN_RECIPE,
    )
)  # fmt: skip
register_method(
    MethodRecord(
        name="bbn", display_name="BBN", build=_build_bbn, sampler="paired_reversed",
        model_options=BBNModelOptions, loss_options=NoOptions,
        source="Zhou et al., CVPR 2020; Megvii-Nanjing/BBN (combiner, network), BCE for multi-label",
    )
)  # fmt: skip
_register_linear(
    "asl", "ASL", "random", AsymmetricOptions, _asl,
    source="Ridnik et al., ICCV 2021; Alibaba-MIIL/ASL losses.py, train.py",
    published=ASL_RECIPE,
)  # fmt: skip
_register_linear(
    "db", "DB", "class_aware", DBOptions, _db_criterion(focal=False), db=True,
    source="Wu et al., ECCV 2020, without the focal term (DB repository, spec 7.4)",
    published=DB_RECIPE,
)  # fmt: skip
_register_linear(
    "db_focal", "DB-Focal", "class_aware", DBFocalOptions, _db_criterion(focal=True), db=True,
    source="Wu et al., ECCV 2020 (DB repository's configuration, spec 7.4)",
    published=DB_RECIPE,
)  # fmt: skip
register_method(
    MethodRecord(
        name="urs", display_name="URS", build=_build_urs, sampler="paired_class_aware",
        model_options=URSModelOptions, loss_options=URSLossOptions,
        source="Guo and Wang, CVPR 2021 (Eq. 1-2; unspecified parts: models/urs.py)",
    )
)  # fmt: skip
_register_linear(
    "mfm", "MFM", "random", MFMOptions, _mfm,
    source="COMIC's multi-focal modifier (wannature/COMIC loss/PriorFocalModifierLoss.py)",
)  # fmt: skip
_register_linear(
    "two_way", "Two-way (linear head)", "class_aware", TwoWayOptions, _two_way,
    source="Kobayashi, CVPR 2023",
)  # fmt: skip

MLCNC_VARIANTS: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    "mlcnc": ("MLC-NC", {"model": {}, "loss": {}}),
    # Without L_FLA: alpha = 0 and no warm-up (MLC-NC's warm-up trains L_FLA alone).
    "mlcnc_no_fla": ("MLC-NC w/o L_FLA", {"model": {}, "loss": {"alpha": 0.0, "warmup_epochs": 0}}),
    # Without L_FPC: beta = 0.
    "mlcnc_no_fpc": ("MLC-NC w/o L_FPC", {"model": {}, "loss": {"beta": 0.0}}),
    # A learnable classifier (initialised at the ETF) instead of the fixed one.
    "mlcnc_learnable_etf": (
        "MLC-NC, learnable ETF",
        {"model": {"classifier_trainable": True}, "loss": {}},
    ),
}
"""MLC-NC and its ablations: display name and the options each one fixes (so they are not
options of it)."""

for _name, (_display, _fixed) in MLCNC_VARIANTS.items():
    _register_mlcnc(_name, _display, _fixed)
