"""Methods a config picks by name: each builds a model, its criterion and its sampler choice.

A method is what differs between the rows of the paper's Table 1; the backbone, data,
optimiser and epoch budget come from the rest of the config and are shared.
"""

from __future__ import annotations

from collections.abc import Callable
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


MethodBuilder = Callable[[MethodConfig, int, np.ndarray], Method]
METHODS: Registry[MethodBuilder] = Registry("method")


def build_method(cfg: MethodConfig, num_classes: int, class_freq: np.ndarray) -> Method:
    """Build the named method for ``num_classes`` classes with training counts ``class_freq``."""
    method = METHODS.get(cfg.name)(cfg, num_classes, np.asarray(class_freq))
    if cfg.sampler is not None:
        method.sampler = cfg.sampler
    return method


@METHODS.register("mlcnc")
def _mlcnc(cfg: MethodConfig, num_classes: int, class_freq: np.ndarray) -> Method:
    from mlcnc.losses import MLCNCLoss
    from mlcnc.models import create_model

    model = create_model(
        num_classes, backbone=cfg.backbone, pretrained=cfg.pretrained, recipe=cfg.recipe, **cfg.model
    )
    criterion = MLCNCLoss(num_classes, proj_dim=model.proj_dim, recipe=cfg.recipe, **cfg.loss)
    return Method(model=model, criterion=criterion, sampler="class_aware")
