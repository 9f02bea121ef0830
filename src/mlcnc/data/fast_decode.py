"""Reduced-size JPEG decoding: libjpeg's DCT scaling through PIL's draft mode.

libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 of its size by computing a smaller inverse DCT
per 8x8 block; that skips most of the decoding work (the IDCT, the colour conversion, the
chroma upsampling, and the memory traffic of the full image). PIL exposes it as
``Image.draft(mode, (w, h))``, which picks the largest scale that keeps the image at least
``(w, h)`` (see :func:`draft_scale`).

What it changes for training: ``RandomResizedCrop`` draws its box as a fraction of the image
area and an aspect ratio, so the boxes have the same distribution on a reduced image (up to
pixel rounding). What differs is the resolution inside a box: a crop that covers fewer pixels
than the output is upsampled instead of downsampled, i.e. blurrier than from the full
image. ``benchmarks/bench_data.py`` measures how often that happens and how far the pixels
move. Crops that stay larger than the output are nearly unchanged (DCT scaling is itself an
antialiased reduction).

Measured (``benchmarks/bench_data.py``, 500 x 375 JPEGs, one thread): not worth it for
images of VOC / COCO size. At 224 px nothing is reduced (375 // 224 = 1); at 128 px they
decode at 1/2 in 1.29 ms against 1.11 ms for a full-size torchvision decode (PIL's own
overhead eats the saving), and 41% of the crops are then
upsampled (1.5% from the full image), 9% less sharp on average. It pays only for sources
several times larger than the crop (phone photos, OpenImages), so nothing uses it yet;
``read_image(..., draft_min_side=...)`` is the one decoder either way.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mlcnc.data.dataset import read_image

JPEG_SCALES = (8, 4, 2, 1)
"""Denominators libjpeg can decode at, largest first."""


def draft_scale(width: int, height: int, min_side: int) -> int:
    """The denominator PIL's draft picks for a ``width`` x ``height`` JPEG asked for at least
    ``min_side`` x ``min_side``: the largest of 8, 4, 2, 1 with ``scale <= width // min_side``
    and ``scale <= height // min_side`` (1 when the image is already smaller)."""
    if min(width, height, min_side) < 1:
        raise ValueError(f"sizes must be positive, got {width}x{height} and {min_side}")
    limit = min(width // min_side, height // min_side)
    return next((s for s in JPEG_SCALES if s <= limit), 1)


def reduced_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """(width, height) of a JPEG decoded at 1/``scale`` (libjpeg rounds up)."""
    return -(-width // scale), -(-height // scale)


def read_image_reduced(path: str | Path, min_side: int | None) -> torch.Tensor:
    """``read_image`` of ``path``, a JPEG decoded at the smallest libjpeg scale whose sides
    both stay >= ``min_side`` (None: full size); errors as ``read_image``'s."""
    return read_image(path, draft_min_side=min_side)
