"""LM-CLIP's criterion: total = L_clip(I, T) + asl_mul * L_bal(logits, y) (vlm-spec 2.2;
``damilab/lm-clip`` @ 9983999, ``train.py`` with ``loss_function = ["clip", "bal"]``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mlcnc.losses.balanced_asl import balanced_asymmetric_loss, lmclip_class_weights
from mlcnc.losses.base import Criterion
from mlcnc.losses.clip_contrastive import clip_contrastive_loss
from mlcnc.models.output import ModelOutput


class LMCLIPCriterion(Criterion):
    """Terms ``clip`` (contrastive, captions built from the labels) and ``bal`` (balanced ASL,
    weighted by ``asl_mul`` in the total). Needs a model output with ``image_embeddings``,
    ``logit_scale`` and ``encode_captions`` (``mlcnc.models.lmclip.ClipOutput``)."""

    batch_level = True  # the contrast between the batch's images and captions

    def __init__(
        self,
        class_freq: np.ndarray,
        *,
        asl_mul: float,
        gamma_neg: float,
        gamma_pos: float,
        clip: float,
        eps: float,
        label_smoothing: float,
        use_weighted_loss: bool,
        class_weight_power: float,
        detach_focal: bool,
        contrastive: bool,
    ) -> None:
        super().__init__()
        weights = (
            lmclip_class_weights(class_freq, class_weight_power)
            if use_weighted_loss
            else np.zeros(len(class_freq))
        )
        self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32))
        self.asl_mul, self.contrastive = asl_mul, contrastive
        self.options = dict(
            gamma_neg=gamma_neg,
            gamma_pos=gamma_pos,
            clip=clip,
            eps=eps,
            label_smoothing=label_smoothing,
            detach_focal=detach_focal,
        )

    def forward(self, output: ModelOutput, targets: Tensor) -> dict[str, Tensor]:
        bal = balanced_asymmetric_loss(output.logits, targets, self.class_weights, **self.options)
        terms = {"bal": bal}
        total = self.asl_mul * bal
        if self.contrastive:
            encode = getattr(output, "encode_captions", None)
            if encode is None or getattr(output, "image_embeddings", None) is None:
                raise ValueError("LM-CLIP's contrastive term needs a ClipOutput (LM-CLIP model)")
            captions = encode(targets).float()
            terms["clip"] = clip_contrastive_loss(
                output.image_embeddings, captions, output.logit_scale.float()
            )
            total = total + terms["clip"]
        return {"total": total, **terms}
