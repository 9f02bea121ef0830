"""LMPT's model (vlm-spec 1.1; ``richard-peng-xia/LMPT`` @ aab39ca, ``lmpt/coop_model.py``): a
CoOp prompt learner on a frozen CLIP.

- Frozen (``requires_grad=False``, eval mode): both CLIP towers, token and positional
  embeddings, ``ln_final``, ``text_projection``, ``logit_scale``. Trained: ``ctx`` only.
- Contexts: class-specific (C, n_ctx, W) drawn from N(0, 0.02^2) (LMPT's README setting), or
  the token embeddings of the words ``ctx_init`` (shared (n_ctx, W), n_ctx = its token
  count: an other n_ctx is refused, None takes it; without ctx_init None is 16; with
  ``class_specific=True`` copied to every class, which LMPT's code does not offer).
- Prompt of class c ("end" position): ``[SOS] ctx_c <name tokens> . [EOS] pad``, 77 tokens;
  the SOS and suffix embeddings come from CLIP's frozen token embedding of
  ``"X X ... X <name>."`` (``prompt_tokens``, a saved buffer).
- Text features: open_clip's ``encode_text`` with the prompt embeddings in place of the
  token embeddings (``encode_prompts``); image features: CLIP's pooled ``encode_image``;
  logits = exp(logit_scale) cos(image, text) (B, C).
- CSEL (training, with captions and the images' sample indices): x_bct = 1 - cos(E_cap[b, t],
  prompt_c[t + m]) for t < 77 - m (``csel_distances``), from the captions' token embeddings
  (``caption_tokens``, a buffer that is not saved: inference needs no caption).

Inference (no gradient, eval mode) reuses the ``text_features`` buffer, re-encoded only when
``ctx`` changed since (version counter), so evaluation and export run the image tower alone.
``bn_train_mode``: the released code calls ``model.train()``, which puts the frozen RN50's
BatchNorm layers in training mode (batch statistics, drifting running statistics although no
image-tower weight is trained). Off by default here: the image tower then computes the same
function in training and evaluation, independent of the batch size per device, and stays the
pretrained one; switch it on to reproduce the drift (ViT towers have no BatchNorm).
"""

from __future__ import annotations

from collections.abc import Sequence
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

CONTEXT_STD = 0.02
"""``nn.init.normal_(ctx_vectors, std=0.02)`` (CoOp / LMPT ``PromptLearner``)."""


DEFAULT_N_CTX = 16  # LMPT's README setting: 16 random contexts (n_ctx None, no ctx_init)


def ctx_init_tokens(config: str, ctx_init: str) -> int:
    """How many context vectors ``ctx_init`` gives: its words' tokens in ``config``'s
    tokenizer (between SOS and EOT)."""
    from mlcnc.models.clip import text_tokenizer

    words = " ".join(ctx_init.replace("_", " ").split())
    ids = text_tokenizer(config)([words])[0]
    return int((ids != 0).sum()) - 2


@dataclass
class LMPTOutput(ModelOutput):
    """ModelOutput plus ``csel_distances`` (B, C, T): 1 - cos between each image's caption
    token embeddings and each class's prompt embeddings, T = 77 - m_ctx (training only)."""

    csel_distances: Tensor | None = None


def encode_prompts(clip: nn.Module, prompts: Tensor, tokens: Tensor) -> Tensor:
    """open_clip's ``CLIP.encode_text`` (3.x) on prompt embeddings (C, L, W) instead of
    ``token_embedding(tokens)``; ``tokens`` (C, L) give the EOT positions. Returns (C, d)."""
    from open_clip.transformer import text_global_pool

    cast = clip.transformer.get_cast_dtype()
    x = prompts.to(cast) + clip.positional_embedding.to(cast)
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    x = text_global_pool(
        x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None)
    )
    if isinstance(clip.text_projection, nn.Linear):
        return clip.text_projection(x)
    return x @ clip.text_projection


class PromptLearner(nn.Module):
    """CoOp's learnable contexts and the fixed prompt tokens around them (``forward`` -> the
    (C, 77, W) prompt embeddings)."""

    def __init__(
        self,
        token_embedding: nn.Embedding,
        tokenizer,
        class_names: Sequence[str],
        n_ctx: int | None,
        ctx_init: str,
        class_specific: bool,
    ) -> None:
        super().__init__()
        self.token_embedding = (token_embedding,)  # CLIP's, frozen: not a submodule here
        width = token_embedding.weight.shape[1]
        num_classes = len(class_names)
        if ctx_init:
            words = " ".join(ctx_init.replace("_", " ").split())
            ids = tokenizer([words])[0]
            count = int((ids != 0).sum()) - 2  # the words' tokens between SOS and EOT
            if n_ctx is not None and n_ctx != count:
                raise ValueError(
                    f"n_ctx={n_ctx} but ctx_init {ctx_init!r} is {count} tokens: with ctx_init "
                    "the contexts are its tokens; give n_ctx equal to that count or leave it unset"
                )
            n_ctx = count
            with torch.no_grad():
                init = token_embedding(ids[1 : 1 + n_ctx]).float().clone()
            if class_specific:
                init = init.unsqueeze(0).repeat(num_classes, 1, 1)
            prefix = words
        else:
            n_ctx = DEFAULT_N_CTX if n_ctx is None else n_ctx
            shape = (num_classes, n_ctx, width) if class_specific else (n_ctx, width)
            init = torch.empty(shape).normal_(std=CONTEXT_STD)
            prefix = " ".join(["X"] * n_ctx)
        self.ctx = nn.Parameter(init)
        self.n_ctx, self.num_classes = n_ctx, num_classes
        texts = [f"{prefix} {name.replace('_', ' ')}." for name in class_names]
        self.register_buffer("prompt_tokens", tokenizer(texts))

    def forward(self) -> Tensor:
        with torch.no_grad():
            fixed = self.token_embedding[0](self.prompt_tokens).float()  # (C, L, W)
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.expand(self.num_classes, -1, -1)
        return torch.cat([fixed[:, :1], ctx.to(fixed.dtype), fixed[:, 1 + self.n_ctx :]], dim=1)


class LMPT(nn.Module):
    """``forward(images, sample_indices=None) -> LMPTOutput`` (see the module docstring)."""

    uses_sample_indices = True

    def __init__(
        self,
        config: str,
        pretrained: bool | str,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        *,
        n_ctx: int | None = None,
        ctx_init: str = "",
        class_specific: bool = True,
        m_ctx: int = 2,
        bn_train_mode: bool = False,
        captions: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        names = list(class_names) if class_names else placeholder_class_names(num_classes)
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
        self.clip = create_clip(config, pretrained).float()
        self.clip.requires_grad_(False)
        self.config, self.num_classes = config, num_classes
        self.m_ctx, self.bn_train_mode = m_ctx, bn_train_mode
        self.tokenizer = text_tokenizer(config)
        length = int(self.clip.positional_embedding.shape[0])
        if not 0 <= m_ctx < length:
            raise ValueError(f"m_ctx must be in [0, {length}), got {m_ctx}")
        self.prompt_learner = PromptLearner(
            self.clip.token_embedding, self.tokenizer, names, n_ctx, ctx_init, class_specific
        )
        embed_dim = int(self.clip.text_projection.shape[-1])
        self.register_buffer("text_features", torch.zeros(num_classes, embed_dim))
        self._text_version = -1
        tokens = self.tokenizer(list(captions)) if captions is not None else None
        self.register_buffer("caption_tokens", tokens, persistent=False)
        self.train()

    def train(self, mode: bool = True) -> LMPT:
        """The frozen CLIP stays in eval mode (its image tower's BatchNorm in training mode
        only with ``bn_train_mode``, as the released code)."""
        super().train(mode)
        self.clip.eval()
        if mode and self.bn_train_mode:
            self.clip.visual.train()
        return self

    def encode_text(self) -> tuple[Tensor, Tensor]:
        """The prompt embeddings (C, 77, W) and the unit text features (C, d)."""
        prompts = self.prompt_learner()
        tokens = self.prompt_learner.prompt_tokens
        return prompts, F.normalize(encode_prompts(self.clip, prompts, tokens), dim=-1)

    def fixed_text_features(self) -> Tensor:
        """The ``text_features`` buffer, re-encoded without gradient when ``ctx`` changed
        since it was last encoded (optimiser steps, ``load_state_dict``)."""
        version = self.prompt_learner.ctx._version
        if version != self._text_version:
            with torch.no_grad():
                self.text_features.copy_(self.encode_text()[1].float())
            self._text_version = self.prompt_learner.ctx._version
        return self.text_features

    def inference_module(self) -> FixedTextCLIP:
        """The image tower with the current text features fixed, without the text tower
        (what ``mlcnc export`` writes); the same logits as this model in eval mode."""
        return FixedTextCLIP(self.clip.visual, self.fixed_text_features(), self.clip.logit_scale)

    def csel_distances(self, prompts: Tensor, sample_indices: Tensor) -> Tensor:
        """x_bct = 1 - cos(E_cap[b, t], prompt_c[t + m]), (B, C, 77 - m), in float32."""
        length = prompts.shape[1] - self.m_ctx
        with torch.no_grad():
            tokens = self.caption_tokens[sample_indices.to(self.caption_tokens.device).long()]
            words = self.clip.token_embedding(tokens[:, :length]).float()
        with torch.autocast(prompts.device.type, enabled=False):
            a = F.normalize(words, dim=-1)
            p = F.normalize(prompts[:, self.m_ctx :].float(), dim=-1)
            return 1.0 - torch.einsum("btw,ctw->bct", a, p)

    def forward(
        self,
        images: Tensor,
        return_attention: bool = False,
        sample_indices: Tensor | None = None,
    ) -> LMPTOutput:
        check_clip_input(self.clip.visual, self.config, images)
        with torch.no_grad():  # the image tower is frozen
            image = F.normalize(self.clip.encode_image(images), dim=-1)
        distances = None
        if self.training or torch.is_grad_enabled():
            prompts, text = self.encode_text()
            if sample_indices is not None and self.caption_tokens is not None:
                distances = self.csel_distances(prompts, sample_indices)
        else:
            text = self.fixed_text_features()
        scale = self.clip.logit_scale.exp()
        logits = scale * image @ text.to(image.dtype).T
        return LMPTOutput(logits=logits, csel_distances=distances)
