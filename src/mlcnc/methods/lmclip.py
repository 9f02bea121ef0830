"""LM-CLIP (Timmermann, Jung, Kim, Lee, IEEE Access 13, 2025; ``damilab/lm-clip`` @
9983999; vlm-spec section 2): the whole CLIP (both towers, embeddings, logit scale)
fine-tuned with CLIP's contrastive loss on captions built from the labels plus a balanced
asymmetric loss, LM-CLIP's class-frequency sampler, AdamW and a cosine schedule.

``method.backbone`` names the CLIP: ``open_clip:ViT-B-16-quickgelu`` or
``open_clip:RN50-quickgelu`` (OpenAI weights); the published recipes are the configs
``voc_lt_lmclip`` / ``coco_lt_lmclip`` (ViT-B/16) and ``*_lmclip_rn50``.
"""

from __future__ import annotations

from mlcnc.methods.registry import BuildRequest, Method, MethodRecord, register_method
from mlcnc.schema import Bool, ConfigError, Fraction, NonNegativeFloat, PositiveFloat, Str, section

LMCLIP_PRESETS = {
    # config name in the authors' repository: asl_mul, gamma_neg, label smoothing, power s, lr
    "voc_mlt_vitb16": {"asl_mul": 0.4, "gamma_neg": 9.8, "label_smoothing": 0.1,
                       "class_weight_power": 1.35, "lr": 1e-6},
    "voc_mlt_rn50": {"asl_mul": 0.2, "gamma_neg": 12.0, "label_smoothing": 0.01,
                     "class_weight_power": 0.7, "lr": 2e-6},
    "coco_mlt_vitb16": {"asl_mul": 5.0, "gamma_neg": 9.8, "label_smoothing": 0.1,
                        "class_weight_power": 1.6, "lr": 1e-6},
    "coco_mlt_rn50": {"asl_mul": 6.0, "gamma_neg": 9.8, "label_smoothing": 0.1,
                      "class_weight_power": 1.35, "lr": 1e-7},
}  # fmt: skip
"""The four published settings (``configs/*.py``; all: gamma_pos 0, clip 0.05, eps 1e-8,
224 px, batch 8, 50 epochs, AdamW decay 0.01, sample power = class-weight power)."""


@section
class LMCLIPModelOptions:
    """class_caption: the label prompt prefix (``"a photo of a " + name``, no period)."""

    class_caption: Str = "a photo of a "


@section
class LMCLIPLossOptions:
    """Defaults: the published VOC-MLT ViT-B/16 setting (``LMCLIP_PRESETS``)."""

    asl_mul: NonNegativeFloat = 0.4
    gamma_neg: NonNegativeFloat = 9.8
    gamma_pos: NonNegativeFloat = 0.0
    clip: Fraction = 0.05
    eps: PositiveFloat = 1e-8
    label_smoothing: Fraction = 0.1
    use_weighted_loss: Bool = True
    class_weight_power: NonNegativeFloat = 1.35
    detach_focal: Bool = False
    contrastive: Bool = True


def clip_config_of(backbone: str, method: str) -> str:
    """The open_clip config named by ``method.backbone`` (``open_clip:<config>``)."""
    from mlcnc.models.clip import is_clip_name, parse_clip_name

    if not is_clip_name(backbone):
        raise ConfigError(
            f"method {method} needs a CLIP backbone: method.backbone=open_clip:<config> "
            f"(e.g. open_clip:ViT-B-16-quickgelu), got {backbone!r}"
        )
    return parse_clip_name(backbone)[0]


def build_lmclip(request: BuildRequest) -> Method:
    from mlcnc.losses.lmclip import LMCLIPCriterion
    from mlcnc.models.lmclip import LMCLIP

    cfg = request.cfg
    model = LMCLIP(
        clip_config_of(cfg.backbone, cfg.name),
        cfg.pretrained,
        request.num_classes,
        request.class_names,
        **request.model,
    )
    criterion = LMCLIPCriterion(request.class_freq, **request.loss)
    return Method(model=model, criterion=criterion, sampler="weighted")


register_method(
    MethodRecord(
        name="lmclip",
        display_name="LM-CLIP",
        build=build_lmclip,
        sampler="weighted",
        model_options=LMCLIPModelOptions,
        loss_options=LMCLIPLossOptions,
        source="Timmermann et al., IEEE Access 2025; damilab/lm-clip model_openai_clip.py, "
        "asl_loss.py, dataset_loaders/*.py, configs/*.py",
        published_configs={"voc_lt": "voc_lt_lmclip", "coco_lt": "coco_lt_lmclip"},
    )
)
