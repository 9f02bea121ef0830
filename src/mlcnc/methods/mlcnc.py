"""MLC-NC (Tao et al., AAAI 2025) and its three ablations of Table 1.

The four share the model and loss options; each ablation fixes some of them (so they are
not options of it): without L_FLA alpha = 0 and no warm-up, without L_FPC beta = 0, the
learnable-ETF variant a trainable classifier. All use class-aware sampling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mlcnc.losses.criterion import MLCNCLossOptions
from mlcnc.methods.registry import (
    BuildRequest,
    Method,
    MethodConfig,
    MethodRecord,
    field_default,
    register_method,
)
from mlcnc.models.head import MLCNCModelOptions
from mlcnc.recipes import get_recipe
from mlcnc.schema import (
    section,
)


def without(options: type, fixed: Mapping[str, Any], name: str) -> type:
    """A copy of the ``options`` section without the fields an ablation fixes."""
    kept = [
        (f.name, f.type, dataclasses.field(default=field_default(f)))
        for f in dataclasses.fields(options)
        if f.name not in fixed
    ]
    plain = dataclasses.make_dataclass(name, kept)
    plain.__module__ = options.__module__  # its field types resolve where they were written
    return section(plain)


def finalize_mlcnc(cfg: MethodConfig, model: dict[str, Any], loss: dict[str, Any]) -> None:
    """Fill the switches left to the recipe (None) with the recipe's values."""
    recipe = get_recipe(cfg.recipe)
    switches = (
        (model, "classifier_trainable", recipe.classifier_trainable),
        (loss, "legacy_warmup", recipe.legacy_warmup),
        (loss, "prototype_mode", recipe.prototype_mode),
    )
    for options, key, value in switches:
        if key in options and options[key] is None:
            options[key] = value


def register_mlcnc(name: str, display: str, fixed: Mapping[str, Mapping[str, Any]]) -> None:
    """Register MLC-NC, or an ablation of it with the options ``fixed`` fixes."""
    model_options = (
        without(MLCNCModelOptions, fixed["model"], f"{name}_model")
        if fixed["model"]
        else MLCNCModelOptions
    )
    loss_options = (
        without(MLCNCLossOptions, fixed["loss"], f"{name}_loss")
        if fixed["loss"]
        else MLCNCLossOptions
    )

    def build(request: BuildRequest) -> Method:
        from mlcnc.losses import MLCNCLoss  # the backbones (timm): lazy
        from mlcnc.models import create_mlcnc

        cfg = request.cfg
        model = create_mlcnc(
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
            finalize=finalize_mlcnc,
            source="Tao et al., AAAI 2025; defaults of the authors' code",
        )
    )


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
"""MLC-NC and its ablations: display name and the options each one fixes."""

for _name, (_display, _fixed) in MLCNC_VARIANTS.items():
    register_mlcnc(_name, _display, _fixed)
