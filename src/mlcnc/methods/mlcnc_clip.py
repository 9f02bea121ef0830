"""MLC-NC on CLIP (vlm-spec 4.4): MLC-NC's head, losses and recipes unchanged, on a CLIP
image tower, with label queries from CLIP's text tower.

- ``mlcnc_clip_a``: the CLIP image tower (``method.backbone=open_clip:<config>``, its last
  spatial map), the random simplex-ETF queries. Any backbone works; this record only names
  the setting.
- ``mlcnc_clip_b``: the simplex ETF nearest (orthogonal Procrustes) to CLIP's text label
  embeddings as the label queries, and (lifted by a fixed isometry into the classifier's
  space when that is at least d wide) as the ETF classifier. Any two C-class ETFs are
  related by a rotation and the head's projections are learned, so B alone changes only the
  initial alignment: expect little difference from A unless the tokens are in CLIP's joint
  space (C).
- ``mlcnc_clip_c``: B plus CLIP's dense joint-space tokens (``open_clip:<config>:dense``),
  the token embedding the identity without ReLU (``embed_dim`` = d) and the attention's
  query / key projections initialised to the identity: at step 0 each class attends by
  CLIP's label-region similarity.
- ``mlcnc_clip_d`` (ablation): the raw text embeddings as queries (not an ETF: L_FLA's
  negative target -1/(C-1) no longer matches their geometry, so this is not MLC-NC).

Label texts: ``templates`` (default ``"a photo of a {}."``) per class name, encoded once at
build (``mlcnc.models.clip.class_text_embeddings``); the queries are buffers, so a
checkpoint carries them and inference needs no text tower.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import nn

from mlcnc.losses.criterion import MLCNCLossOptions
from mlcnc.methods.mlcnc import finalize_mlcnc
from mlcnc.methods.registry import (
    BuildRequest,
    Method,
    MethodRecord,
    field_default,
    register_method,
)
from mlcnc.models.head import MLCNCModelOptions
from mlcnc.schema import ConfigError, PromptTemplates, section

Variant = Literal["a", "b", "c", "d"]


def _clip_options() -> type:
    fields = [
        (f.name, f.type, dataclasses.field(default=field_default(f)))
        for f in dataclasses.fields(MLCNCModelOptions)
    ]
    fields += [
        (
            "templates",
            PromptTemplates,
            dataclasses.field(default_factory=lambda: ["a photo of a {}."]),
        ),
        ("lift_seed", "Int", dataclasses.field(default=0)),  # names resolve in models.head
    ]
    plain = dataclasses.make_dataclass("MLCNCClipModelOptions", fields)
    plain.__module__ = MLCNCModelOptions.__module__
    plain.__doc__ = (
        "MLC-NC's head options plus templates (label prompts; '{}' is the class name) and "
        "lift_seed (the fixed isometry lifting d-dim CLIP vectors into wider spaces)."
    )
    return section(plain)


MLCNCClipModelOptions = _clip_options()


def build_variant(variant: Variant):
    def build(request: BuildRequest) -> Method:
        from mlcnc.losses import MLCNCLoss
        from mlcnc.models.clip import (
            ClipImageBackbone,
            class_text_embeddings,
            create_clip,
            is_clip_name,
            isometry,
            parse_clip_name,
            placeholder_class_names,
            procrustes_etf,
        )
        from mlcnc.models.mlcnc import MLCNC, create_mlcnc

        cfg = request.cfg
        options = dict(request.model)
        templates, lift_seed = options.pop("templates"), options.pop("lift_seed")
        if options.get("classifier_trainable") is None:
            from mlcnc.recipes import get_recipe

            options["classifier_trainable"] = get_recipe(cfg.recipe).classifier_trainable
        if variant == "a":
            model = create_mlcnc(
                request.num_classes, cfg.backbone, cfg.pretrained, cfg.recipe, **options
            )
        else:
            if not is_clip_name(cfg.backbone):
                raise ConfigError(
                    f"method {cfg.name} needs CLIP's text tower: method.backbone="
                    f"open_clip:<config> (e.g. open_clip:ViT-B-16-quickgelu), got "
                    f"{cfg.backbone!r}"
                )
            config, output = parse_clip_name(cfg.backbone)
            if variant == "c":
                output = "dense"
            clip = create_clip(config, cfg.pretrained)
            names = request.class_names or placeholder_class_names(request.num_classes)
            text = class_text_embeddings(config, cfg.pretrained, names, templates, clip)
            backbone = ClipImageBackbone(config, output=output, clip_model=clip)
            del clip  # the text tower is not kept: the queries are buffers
            embed_dim, d = options["embed_dim"], text.shape[1]
            if variant == "c" and embed_dim != d:
                raise ConfigError(
                    f"method {cfg.name}: identity tokens need method.model.embed_dim = CLIP's "
                    f"joint width d = {d}, got {embed_dim}"
                )
            if embed_dim < d:
                raise ConfigError(
                    f"method {cfg.name}: method.model.embed_dim ({embed_dim}) must be at least "
                    f"CLIP's joint width d = {d}"
                )
            model = MLCNC(backbone, request.num_classes, **options)
            head = model.head
            lift = isometry(d, embed_dim, lift_seed)
            queries = procrustes_etf(text) if variant in ("b", "c") else text.T.float()
            with torch.no_grad():
                head.label_queries.copy_((lift @ queries).T)
                width = head.classifier.shape[0]
                if variant in ("b", "c") and width >= d:
                    head.classifier.copy_(isometry(d, width, lift_seed + 1) @ queries)
            if variant == "c":
                head.token_embed = nn.Identity()
                head.token_relu = False
                e = embed_dim
                with torch.no_grad():
                    mha = head.attention.mha
                    mha.in_proj_weight[: 2 * e].copy_(torch.eye(e).repeat(2, 1))
                    mha.in_proj_bias[: 2 * e].zero_()
        criterion = MLCNCLoss(
            request.num_classes, proj_dim=model.proj_dim, recipe=cfg.recipe, **request.loss
        )
        return Method(model=model, criterion=criterion, sampler="class_aware")

    return build


VARIANTS: dict[str, tuple[Variant, str]] = {
    "mlcnc_clip_a": ("a", "MLC-NC on CLIP (A: image tower, ETF queries)"),
    "mlcnc_clip_b": ("b", "MLC-NC on CLIP (B: CLIP-text ETF)"),
    "mlcnc_clip_c": ("c", "MLC-NC on CLIP (C: CLIP-text ETF, dense joint tokens)"),
    "mlcnc_clip_d": ("d", "MLC-NC on CLIP (D: raw text queries, ablation)"),
}

for _name, (_variant, _display) in VARIANTS.items():
    register_method(
        MethodRecord(
            name=_name,
            display_name=_display,
            build=build_variant(_variant),
            sampler="class_aware",
            model_options=MLCNCClipModelOptions,
            loss_options=MLCNCLossOptions,
            finalize=finalize_mlcnc,
            source="mlcnc's proposal: MLC-NC (Tao et al., AAAI 2025) on CLIP "
            "(Radford et al., 2021) through open_clip",
        )
    )
