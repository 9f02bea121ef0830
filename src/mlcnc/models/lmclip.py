"""LM-CLIP's model (vlm-spec 2.1): the whole CLIP fine-tuned, logits from label prompts.

``forward(images)``: I = norm(encode_image(x)) (B, d); label embeddings
Lab = norm(encode_text("a photo of a <name>")) (C, d) recomputed every step through the
trainable text tower; logits = exp(logit_scale) I Lab^T (B, C), logit_scale trainable from
ln 100, no clamp (as released).

Inference needs no text tower pass per batch: a forward without gradient in eval mode
(evaluate, predict, export) reads the ``label_embeddings`` buffer (saved in the checkpoint),
which is re-encoded only when a text-tower parameter changed since (version counters). The output carries what LM-CLIP's
contrastive term needs (``ClipOutput``): the image embeddings, the logit scale and
``encode_captions(targets)``, which builds each image's caption from its labels
(``"a photo of a car, person"``) and encodes it with the same text tower, inside the
forward that DDP wraps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlcnc.models.clip import (
    FixedTextCLIP,
    check_clip_input,
    create_clip,
    placeholder_class_names,
    text_tokenizer,
)
from mlcnc.models.output import ModelOutput


@dataclass
class ClipOutput(ModelOutput):
    """ModelOutput plus what CLIP-style losses read.

    image_embeddings: (B, d) unit image embeddings; logit_scale: the (log) scale parameter;
    encode_captions: targets (B, C) -> (B, d) unit caption embeddings (through the model's
    text tower, with gradient).
    """

    image_embeddings: Tensor | None = None
    logit_scale: Tensor | None = None
    encode_captions: Callable[[Tensor], Tensor] | None = None


def label_caption(prefix: str, names: Sequence[str], labels: Tensor) -> str:
    """LM-CLIP's caption of one image: ``prefix + ", ".join(positive names in order)``."""
    return prefix + ", ".join(names[i] for i in torch.nonzero(labels > 0.5).flatten().tolist())


class LMCLIP(nn.Module):
    def __init__(
        self,
        config: str,
        pretrained: bool | str,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        class_caption: str = "a photo of a ",
    ) -> None:
        super().__init__()
        names = list(class_names) if class_names else placeholder_class_names(num_classes)
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
        self.clip = create_clip(config, pretrained)
        self.clip.float()
        self.config, self.num_classes = config, num_classes
        self.class_names, self.class_caption = names, class_caption
        self.tokenizer = text_tokenizer(config)
        self.register_buffer(
            "label_tokens", self.tokenizer([class_caption + n for n in names]), persistent=True
        )
        embed_dim = int(self.clip.text_projection.shape[1])
        self.register_buffer("label_embeddings", torch.zeros(num_classes, embed_dim))
        self._label_version = -1

    def encode_labels(self) -> Tensor:
        """(C, d) unit label embeddings through the text tower."""
        return F.normalize(self.clip.encode_text(self.label_tokens), dim=-1)

    def encode_captions(self, targets: Tensor) -> Tensor:
        """(B, d) unit embeddings of the captions built from ``targets`` (B, C)."""
        captions = [label_caption(self.class_caption, self.class_names, row) for row in targets]
        tokens = self.tokenizer(captions).to(self.label_tokens.device)
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def _text_version(self) -> int:
        """Changes whenever a text-tower parameter is written in place (optimiser and EMA
        steps, ``load_state_dict``)."""
        return sum(p._version for n, p in self.clip.named_parameters() if "visual." not in n)

    def fixed_label_embeddings(self) -> Tensor:
        """The ``label_embeddings`` buffer, re-encoded (no gradient) only when the text tower
        changed since it was last encoded: inference passes reuse it."""
        version = self._text_version()
        if version != self._label_version:
            with torch.no_grad():
                self.label_embeddings.copy_(self.encode_labels().float())
            self._label_version = self._text_version()
        return self.label_embeddings

    def inference_module(self) -> FixedTextCLIP:
        """The image tower with the current label embeddings fixed, without the text tower
        (what ``mlcnc export`` writes); the same logits as this model in eval mode."""
        return FixedTextCLIP(self.clip.visual, self.fixed_label_embeddings(), self.clip.logit_scale)

    def forward(self, images: Tensor, return_attention: bool = False) -> ClipOutput:
        check_clip_input(self.clip.visual, self.config, images)
        image = F.normalize(self.clip.encode_image(images), dim=-1)
        if self.training or torch.is_grad_enabled():
            labels = self.encode_labels()
        else:
            labels = self.fixed_label_embeddings().to(image.dtype)
        scale = self.clip.logit_scale
        logits = scale.exp() * image @ labels.T.to(image.dtype)
        return ClipOutput(
            logits=logits,
            image_embeddings=image,
            logit_scale=scale,
            encode_captions=self.encode_captions,
        )
