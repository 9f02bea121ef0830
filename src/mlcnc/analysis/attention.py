"""Where the model looks for each class: attention maps drawn over the input image.

MLC-NC's class queries attend over the h*w backbone tokens; a class's map (h, w) is
upsampled bilinearly to the model's input (the pixels it saw, after the run's evaluation
resize and center crop, or square resize), scaled to [0, 1], coloured and blended over the image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from mlcnc.analysis.predict import ImagePrediction
from mlcnc.io import write_atomic

ATTENTION_FILES = ("contact_sheet.png", "[0-9][0-9][0-9][0-9][0-9][0-9]_*")
"""What ``predict --attention DIR`` writes into DIR: the contact sheet and a folder per image."""


def attention_overlay(
    image: np.ndarray, attention: np.ndarray, alpha: float = 0.5, cmap: str = "jet"
) -> np.ndarray:
    """uint8 image (3, H, W) and one attention map (h, w) -> uint8 overlay (H, W, 3)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got shape {image.shape}")
    if attention.ndim != 2:
        raise ValueError(f"attention must be a (h, w) map, got shape {attention.shape}")
    height, width = image.shape[1:]
    upsampled = F.interpolate(
        torch.as_tensor(attention, dtype=torch.float32)[None, None],
        size=(height, width),
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    low, high = upsampled.min(), upsampled.max()
    scaled = (upsampled - low) / (high - low) if high > low else np.zeros_like(upsampled)
    heat = colormaps[cmap](scaled)[..., :3]  # (H, W, 3) in [0, 1]
    blended = (1 - alpha) * image.transpose(1, 2, 0) / 255.0 + alpha * heat
    return np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8)


def safe_name(text: str) -> str:
    """A file-name-safe version of a class or image name."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "unnamed"


def write_attention_maps(
    prediction: ImagePrediction, index: int, class_names: Sequence[str], out_dir: str | Path
) -> list[Path]:
    """One PNG per predicted class: ``out_dir/<index>_<image stem>/<rank>_<class>.png``."""
    if prediction.image is None or prediction.attention is None or prediction.classes is None:
        raise ValueError(f"{prediction.path}: prediction holds no image or attention maps")
    folder = Path(out_dir) / f"{index:06d}_{safe_name(prediction.path.stem)}"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for rank, (c, attention) in enumerate(
        zip(prediction.classes, prediction.attention, strict=True)
    ):
        path = folder / f"{rank:02d}_{safe_name(class_names[c])}.png"
        image = Image.fromarray(attention_overlay(prediction.image, attention))
        write_atomic(path, writer=lambda f, image=image: image.save(f, format="PNG"))
        written.append(path)
    return written


class ContactSheet:
    """A grid with one row per image: the input crop, then its predicted classes' overlays,
    each captioned; rows beyond ``max_rows`` and overlays beyond ``max_classes`` are left out
    (the sheet says how many)."""

    def __init__(self, tile: int = 160, max_rows: int = 32, max_classes: int = 8) -> None:
        self.tile = tile
        self.max_rows = max_rows
        self.max_classes = max_classes
        self.rows: list[list[tuple[Image.Image, str]]] = []
        self.left_out = 0
        self.font = ImageFont.load_default(size=max(10, tile // 12))

    def add(self, prediction: ImagePrediction, class_names: Sequence[str]) -> None:
        if len(self.rows) >= self.max_rows:
            self.left_out += 1
            return
        assert prediction.image is not None and prediction.classes is not None
        assert prediction.attention is not None and prediction.probabilities is not None
        row = [(self._thumbnail(prediction.image.transpose(1, 2, 0)), prediction.path.name)]
        shown = list(zip(prediction.classes, prediction.attention, strict=True))[: self.max_classes]
        for c, attention in shown:
            overlay = attention_overlay(prediction.image, attention)
            row.append(
                (self._thumbnail(overlay), f"{class_names[c]} {prediction.probabilities[c]:.2f}")
            )
        self.rows.append(row)

    def _thumbnail(self, pixels: np.ndarray) -> Image.Image:
        return Image.fromarray(pixels).resize((self.tile, self.tile), Image.Resampling.BILINEAR)

    def save(self, path: str | Path) -> Path:
        if not self.rows:
            raise ValueError("the contact sheet has no image")
        caption = self.font.size + 6
        columns = max(len(row) for row in self.rows)
        footer = caption if self.left_out else 0
        sheet = Image.new(
            "RGB", (columns * self.tile, len(self.rows) * (self.tile + caption) + footer), "white"
        )
        draw = ImageDraw.Draw(sheet)
        for r, row in enumerate(self.rows):
            top = r * (self.tile + caption)
            for col, (thumbnail, text) in enumerate(row):
                sheet.paste(thumbnail, (col * self.tile, top + caption))
                draw.text((col * self.tile + 3, top + 2), text[:40], fill="black", font=self.font)
        if self.left_out:
            draw.text(
                (3, sheet.height - footer + 2),
                f"{self.left_out} more images not shown (see their folders)",
                fill="black",
                font=self.font,
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, writer=lambda f: sheet.save(f, format="PNG"))
        return path
