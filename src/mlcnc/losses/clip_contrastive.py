"""CLIP's symmetric contrastive loss (OpenCLIP ``ClipLoss``, as LM-CLIP uses it with
``world_size=1``; vlm-spec 2.2), over the global batch.

L = (CE(s I T^T, arange(B)) + CE(s T I^T, arange(B))) / 2 with s = exp(logit_scale), I and
T the unit image and caption embeddings. Under DDP every process gathers all shards' I and
T with their gradients (``gather_batch``) and computes the loss of the global batch, so the
mean over processes is the single-process value on the global batch (mlcnc's contract; the
released code trains on one GPU). Identical captions in a batch still count as negatives,
as in the released code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mlcnc.losses.distributed import gather_batch


def clip_contrastive_loss(
    image_embeddings: Tensor, text_embeddings: Tensor, logit_scale: Tensor
) -> Tensor:
    """Image (B, d) and text (B, d) embeddings (already unit length), ``logit_scale`` the
    log of the temperature's inverse (the loss uses its exp)."""
    if image_embeddings.shape != text_embeddings.shape or image_embeddings.dim() != 2:
        raise ValueError(
            f"clip_contrastive_loss: image {tuple(image_embeddings.shape)} and text "
            f"{tuple(text_embeddings.shape)} embeddings must both be (B, d)"
        )
    images, texts = gather_batch(image_embeddings), gather_batch(text_embeddings)
    logits = logit_scale.exp() * images @ texts.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
