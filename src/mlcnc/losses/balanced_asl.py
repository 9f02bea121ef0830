"""LM-CLIP's balanced asymmetric loss and its class / sample weights (Timmermann et al.,
IEEE Access 2025; ``damilab/lm-clip`` @ 9983999, ``asl_loss.py``
``BalancedAsymmetricLossOptimized``, ``dataset_loaders/voc_mlt.py``; vlm-spec 2.2, 2.3).

As the authors' code computes it (``return_mean=True``, focusing weight with gradient):

- t = (1 - ls) y + ls / C (smoothed targets; anti-targets 1 - y stay unsmoothed);
- xn = x / max(x), ONE maximum over the whole (B, C) batch, with gradient into the arg-max
  entry (under DDP: the global batch's maximum, through ``gather_batch``);
- p = sigmoid(xn), q = min(1 - p + clip, 1);
- L+ = t log(max(p, eps)) (1 + cw_c), L- = (1 - y) log(max(q, eps));
- w = (1 - p t - q (1 - y))^(gamma_pos t + gamma_neg (1 - y));
- loss = -mean_{b,c} (L+ + L-) w (the mean over the global batch's entries).

Quirks kept: if every logit of the batch is negative, dividing by the negative maximum
reverses the order; a sample's loss depends on the batch through max(x).

One departure: with label smoothing a negative entry's base 1 - p t - q is -p ls / C < 0
once q is clipped to 1 (xn below about -2.9), and the released ``torch.pow`` of a negative
base with a non-integer gamma_neg is NaN, which stops the run at its first step from any
initialisation whose logits are not all positive (a random tower; CLIP-scale pretrained
logits never get there). The base is clamped at 0 here: the same value wherever the
released code is finite, up to |base|^gamma <= (ls / C)^gamma (below 1e-20 for every
published setting), and a zero weight where it is NaN.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mlcnc.losses.distributed import gather_batch, global_entry_mean


def lmclip_class_weights(class_freq: np.ndarray, power: float) -> np.ndarray:
    """cw_c = (N / n_c)^s / max_k (N / n_k)^s = (n_min / n_c)^s, in float64 (the authors'
    loaders; a class without training images would divide by zero: refused)."""
    freq = np.asarray(class_freq, dtype=np.float64)
    if (freq <= 0).any():
        raise ValueError(
            "LM-CLIP's class weights need every class to have a training image; classes "
            f"without one: {np.flatnonzero(freq <= 0).tolist()}"
        )
    ratio = (freq.sum() / freq) ** power  # N cancels in the ratio: any positive N
    return ratio / ratio.max()


def lmclip_sample_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """sw_i = (sum_{c in labels_i} N / n_c)^s / max_j (...), the probabilities (up to a
    constant) of LM-CLIP's ``WeightedRandomSampler``; float64. An image without labels
    gets weight 0 (never drawn)."""
    y = (np.asarray(labels) > 0).astype(np.float64)
    freq = y.sum(0)
    inverse = np.divide(len(y), freq, out=np.zeros_like(freq), where=freq > 0)
    raw = (y @ inverse) ** power
    if raw.max() <= 0:
        raise ValueError("LM-CLIP's sampler needs at least one labelled training image")
    return raw / raw.max()


def balanced_asymmetric_loss(
    logits: Tensor,
    targets: Tensor,
    class_weights: Tensor,
    *,
    gamma_neg: float,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    label_smoothing: float = 0.0,
    detach_focal: bool = False,
) -> Tensor:
    """LM-CLIP's balanced ASL (module docstring); logits, targets (B, C), class_weights (C,)."""
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(
            f"balanced_asymmetric_loss: logits {tuple(logits.shape)} and targets "
            f"{tuple(targets.shape)} must both be (B, C)"
        )
    y = targets.to(logits.dtype)
    num_classes = logits.shape[1]
    t = (1.0 - label_smoothing) * y + label_smoothing / num_classes
    anti = 1.0 - y
    xn = logits / gather_batch(logits).max()
    p = torch.sigmoid(xn)
    q = 1.0 - p
    if clip > 0:
        q = (q + clip).clamp(max=1.0)
    positive = t * torch.log(p.clamp(min=eps)) * (1.0 + class_weights.to(logits.dtype))
    negative = anti * torch.log(q.clamp(min=eps))
    loss = positive + negative
    if gamma_neg > 0 or gamma_pos > 0:
        base = (1.0 - p * t - q * anti).clamp(min=0.0)  # the released NaN: module docstring
        weight = torch.pow(base, gamma_pos * t + gamma_neg * anti)
        loss = loss * (weight.detach() if detach_focal else weight)
    return -global_entry_mean(loss)
