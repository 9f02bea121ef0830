"""The two MLC-NC recipes (spec A2) and every switch each one sets, in one place.

``paper`` is what the paper describes (the code's choices where it is silent); ``official``
reproduces the released code's behaviour, quirks included. Models, losses and data read the
switches from here; ``method.recipe`` is a closed choice of these names. Each switch can
still be overridden by its own option (e.g. ``method.model.classifier_trainable``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RecipeName = Literal["paper", "official"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INATURALIST_MEAN = (0.466, 0.471, 0.380)
INATURALIST_STD = (0.195, 0.194, 0.192)


@dataclass(frozen=True)
class Recipe:
    """The switches of one recipe.

    classifier_trainable: the ETF classifier is an nn.Parameter with L2 decay (official) or
        a fixed buffer outside the optimizer (paper).
    legacy_warmup: during the loss warm-up keep the zero-weighted L_FPC and L_TW terms in
        the graph (official) instead of computing L_FLA alone (paper).
    prototype_mode: L_FPC's prototypes from the previous epoch (``per_epoch``, paper) or
        a cumulative mean over all epochs (``cumulative``, official).
    mean, std: normalisation statistics (ImageNet for paper, iNaturalist for official).
    eval_flip: random horizontal flip at evaluation time (the released code does it; the
        paper's evaluation is deterministic). ``data.eval_flip`` overrides it.
    """

    name: RecipeName
    classifier_trainable: bool
    legacy_warmup: bool
    prototype_mode: Literal["per_epoch", "cumulative"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    eval_flip: bool


RECIPES: dict[str, Recipe] = {
    "paper": Recipe(
        name="paper",
        classifier_trainable=False,
        legacy_warmup=False,
        prototype_mode="per_epoch",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        eval_flip=False,
    ),
    "official": Recipe(
        name="official",
        classifier_trainable=True,
        legacy_warmup=True,
        prototype_mode="cumulative",
        mean=INATURALIST_MEAN,
        std=INATURALIST_STD,
        # The released code flips at test time; mlcnc keeps evaluation deterministic unless
        # asked (data.eval_flip=true), so both recipes' numbers are reproducible.
        eval_flip=False,
    ),
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; a ValueError naming the choices otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None
