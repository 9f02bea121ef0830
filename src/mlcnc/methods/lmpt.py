"""LMPT (Xia et al., arXiv 2305.04536, ACL 2024 ALVR workshop; ``richard-peng-xia/LMPT`` @
aab39ca; vlm-spec sections 1 and 4.3): CoOp prompt tuning on a frozen CLIP with
lam * L_cls + (1 - lam) * CSEL, the class-specific embedding loss between the prompts and
each image's caption.

``method.backbone`` names the CLIP (``open_clip:RN50-quickgelu`` or
``open_clip:ViT-B-16-quickgelu``, OpenAI weights); ``method.model.captions`` the caption file
(``mlcnc.data.captions``: ``<image path> <caption>`` per line, e.g. LMPT's
``data/voc/voc_lt_captions.txt``). The published recipes are the configs ``voc_lt_lmpt`` /
``coco_lt_lmpt`` (ViT-B/16) and ``*_lmpt_rn50`` (RN50).

Faithful switches and corrections (README "LMPT"): ``cls_loss`` ``dbl_lmpt`` (LMPT's DB copy,
batch-scalar focal factor; default) | ``db_focal`` (DB's element-wise) | ``asl_mean``;
``csel_counts`` ``raw`` (the corrected CSEL) -- ``softmax``, what train.py passes, is refused
(NaN, issues #5 / #7); ``csel_score`` ``distance`` (as released) | ``similarity``.
"""

from __future__ import annotations

from typing import Any, Literal

from mlcnc.methods.db import DB_PRESET_OF_DATA, DBFocalOptions, finalize_db, pop_db_params
from mlcnc.methods.lmclip import clip_config_of
from mlcnc.methods.registry import BuildRequest, Method, MethodConfig, MethodRecord, register_method
from mlcnc.schema import (
    Bool,
    ConfigError,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Str,
    section,
)


@section
class LMPTModelOptions:
    """The prompt learner (LMPT README / train.sh: 16 class-specific random contexts).

    n_ctx: context tokens (None: 16, or with ``ctx_init`` its words' token count, which
    resolving the config records; an other count with ``ctx_init`` is refused);
    ctx_init: words initialising the context ("" = N(0, 0.02)); class_specific: one context
    per class (LMPT's ``--csc``); class_token_position: "end" (the README setting);
    bn_train_mode: the released RN50 BatchNorm drift (see ``mlcnc.models.lmpt``);
    captions: the caption file (needed for training with lam < 1); caption_chars: each
    caption's first characters kept (LMPT: 75); m_ctx: CSEL's offset m (caption position t
    faces prompt position t + m).
    """

    n_ctx: PositiveInt | None = None
    ctx_init: Str = ""
    class_specific: Bool = True
    class_token_position: Literal["end"] = "end"
    bn_train_mode: Bool = False
    captions: Str = ""
    caption_chars: PositiveInt = 75
    m_ctx: NonNegativeInt = 2


@section
class LMPTLossOptions(DBFocalOptions):
    """lam * L_cls + (1 - lam) * CSEL (``lmpt/train.py``: lam 0.5, margin 0.2, gamma 2).
    The DB values (``preset`` by dataset, gamma 2, balance_param 2) are dbl_lmpt's and
    db_focal's; num_samples: None = the training split's size."""

    lam: Fraction = 0.5
    cls_loss: Literal["dbl_lmpt", "db_focal", "asl_mean"] = "dbl_lmpt"
    csel_margin: PositiveFloat = 0.2
    csel_gamma: NonNegativeFloat = 2.0
    csel_counts: Literal["raw", "softmax"] = "raw"
    csel_score: Literal["distance", "similarity"] = "distance"


def finalize_lmpt(cfg: MethodConfig, model: dict[str, Any], loss: dict[str, Any]) -> None:
    """DB's preset values; the softmaxed CSEL counts refused (they give NaN)."""
    from mlcnc.losses.lmpt import SOFTMAX_COUNTS_REFUSED

    if loss["csel_counts"] == "softmax":
        raise ConfigError(f"method.loss.{SOFTMAX_COUNTS_REFUSED}")
    if model["ctx_init"]:
        from mlcnc.models.lmpt import ctx_init_tokens

        count = ctx_init_tokens(clip_config_of(cfg.backbone, cfg.name), model["ctx_init"])
        if model["n_ctx"] not in (None, count):
            raise ConfigError(
                f"method.model.n_ctx={model['n_ctx']} but method.model.ctx_init "
                f"{model['ctx_init']!r} is {count} tokens, and with ctx_init the contexts are "
                f"its tokens: set method.model.n_ctx={count} or null, or drop ctx_init"
            )
        model["n_ctx"] = count
    elif model["n_ctx"] is None:
        model["n_ctx"] = 16  # LMPT's README setting (models.lmpt.DEFAULT_N_CTX)
    finalize_db(cfg, model, loss)


def captions_for(request: BuildRequest, options: dict[str, Any]) -> list[str] | None:
    """The training images' captions when this build trains (``train_paths`` given) and
    the CSEL is on; a training build with lam < 1 and no caption file is refused."""
    path, chars = options.pop("captions"), options.pop("caption_chars")
    if request.train_paths is None or request.loss["lam"] >= 1.0:
        return None
    if not path:
        raise ConfigError(
            f"method {request.cfg.name}: the class-specific embedding loss (method.loss.lam="
            f"{request.loss['lam']:g} < 1) needs one caption per training image: set "
            "method.model.captions=/path/to/captions.txt (`<image path> <caption>` per line, "
            "e.g. LMPT's data/voc/voc_lt_captions.txt), or method.loss.lam=1 to train without it"
        )
    from mlcnc.data.captions import read_captions

    return read_captions(path, request.train_paths, chars)


def build_lmpt(request: BuildRequest) -> Method:
    from mlcnc.losses.lmpt import LMPTCriterion
    from mlcnc.models.lmpt import LMPT

    cfg = request.cfg
    options = dict(request.model)
    options.pop("class_token_position")
    captions = captions_for(request, options)
    model = LMPT(
        clip_config_of(cfg.backbone, cfg.name),
        cfg.pretrained,
        request.num_classes,
        request.class_names,
        captions=captions,
        **options,
    )
    loss = dict(request.loss)
    size, params = pop_db_params(request, loss)
    criterion = LMPTCriterion(request.class_freq, size, params, **loss)
    return Method(model=model, criterion=criterion, sampler="random")


register_method(
    MethodRecord(
        name="lmpt",
        display_name="LMPT",
        build=build_lmpt,
        sampler="random",
        model_options=LMPTModelOptions,
        loss_options=LMPTLossOptions,
        data_defaults=DB_PRESET_OF_DATA,
        finalize=finalize_lmpt,
        source="Xia et al., ALVR 2024 (corrected CSEL); richard-peng-xia/LMPT coop_model.py, "
        "csel.py, dbl.py, asl.py, train.py",
        published_configs={"voc_lt": "voc_lt_lmpt", "coco_lt": "coco_lt_lmpt"},
    )
)
