"""Batched, streaming prediction over image files and folders.

``find_images`` expands files and folders into a list of image files; ``predict_images``
decodes them in DataLoader workers, runs the model batch by batch and yields one
``ImagePrediction`` per file, in input order, as soon as its batch is done, so a folder of
a million images never sits in memory. An unreadable file yields a prediction with
``error`` set (and no scores) instead of stopping the run.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mlcnc.analysis.preprocessing import Preprocessing
from mlcnc.data.dataset import DEFAULT_MAX_IMAGE_PIXELS, BadImageError, read_image
from mlcnc.io import json_text

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})
"""Suffixes collected from folders (what ``mlcnc.data.read_image`` decodes); files named
explicitly are read whatever their suffix."""


def find_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given and, for each folder, its image files (recursively, sorted); a file
    reached twice is listed once. Raises FileNotFoundError naming an input that does not exist.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    # a broken link is kept, so it is reported as unreadable, not skipped unseen
                    if (p.is_file() or p.is_symlink()) and p.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        elif path.exists():
            paths.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image file or folder")
    unique = {path.resolve(): path for path in reversed(paths)}  # keeps the first occurrence
    return [unique[key] for key in dict.fromkeys(p.resolve() for p in paths)]


def select_classes(
    probabilities: np.ndarray, threshold: float | None = 0.5, top_k: int | None = None
) -> list[np.ndarray]:
    """Per row of (B, C) probabilities, the predicted class indices, highest score first:
    the ``top_k`` best if given, else those with probability >= ``threshold``."""
    if (threshold is None) == (top_k is None):
        raise ValueError("give exactly one of threshold and top_k")
    order = np.argsort(-probabilities, axis=1, kind="stable")
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        return list(order[:, :top_k])
    counts = (probabilities >= threshold).sum(axis=1)
    return [row[:count] for row, count in zip(order, counts, strict=True)]


@dataclass
class ImagePrediction:
    """One image's result.

    probabilities: (C,) per-class probabilities; None when the image could not be read.
    classes:       predicted class indices, highest probability first.
    attention:     (K, h, w) attention maps of the predicted classes, when asked for.
    image:         uint8 (3, H, W), the model's input crop de-normalised, when asked for.
    error:         why the file could not be read, else None.
    """

    path: Path
    probabilities: np.ndarray | None = None
    classes: np.ndarray | None = None
    attention: np.ndarray | None = None
    image: np.ndarray | None = None
    error: str | None = None


class _ImageFiles(Dataset):
    """Decoded, transformed images; a bad file gives its error instead of raising."""

    def __init__(
        self,
        paths: Sequence[Path],
        transform: Callable[[Tensor], Tensor],
        max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        path = self.paths[index]
        try:
            return index, self.transform(read_image(path, self.max_pixels)), None
        except BadImageError as error:
            return index, None, str(error)
        except (RuntimeError, ValueError, TypeError) as error:  # e.g. a degenerate image size
            return index, None, f"{path}: cannot transform image ({error})"


def _collate(items: list[tuple[int, Tensor | None, str | None]]) -> dict[str, Any]:
    good = [(i, x) for i, x, _ in items if x is not None]
    return {
        "indices": [i for i, _, _ in items],
        "good": [i for i, _ in good],
        "images": torch.stack([x for _, x in good]) if good else None,
        "errors": {i: e for i, _, e in items if e is not None},
    }


@torch.inference_mode()
def predict_images(
    model: nn.Module,
    paths: Sequence[Path],
    transform: Callable[[Tensor], Tensor],
    *,
    threshold: float | None = 0.5,
    top_k: int | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    preprocessing: Preprocessing | None = None,
    with_attention: bool = False,
    keep_images: bool = False,
    progress: Callable[[int], Any] | None = None,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> Iterator[ImagePrediction]:
    """Yield an ``ImagePrediction`` per path, in order (see the module docstring).

    ``with_attention`` needs a model whose forward takes ``return_attention=True`` and fills
    ``ModelOutput.attention`` (MLC-NC); ``keep_images`` needs ``preprocessing`` to undo the
    normalisation. ``progress(n)`` is called after each batch with the number of files done.
    ``max_pixels``: larger images are refused from their header (``read_image``).
    """
    if keep_images and preprocessing is None:
        raise ValueError("keep_images needs the model's preprocessing to de-normalise the input")
    loader = DataLoader(
        _ImageFiles(paths, transform, max_pixels),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    device = torch.device(device)
    for batch in loader:
        results: dict[int, ImagePrediction] = {
            i: ImagePrediction(paths[i], error=e) for i, e in batch["errors"].items()
        }
        if batch["images"] is not None:
            images = batch["images"].to(device)
            output = model(images, return_attention=with_attention)
            if with_attention and getattr(output, "attention", None) is None:
                raise ValueError(
                    f"{type(model).__name__} gives no attention maps; only models with "
                    "class-query attention (MLC-NC) can draw them"
                )
            probabilities = torch.sigmoid(output.logits.float()).cpu().numpy()
            chosen = select_classes(probabilities, threshold, top_k)
            attention = _attention_grids(output) if with_attention else None
            crops = preprocessing.denormalize(images).cpu().numpy() if keep_images else None
            for row, index in enumerate(batch["good"]):
                results[index] = ImagePrediction(
                    paths[index],
                    probabilities=probabilities[row],
                    classes=chosen[row],
                    attention=attention[row, chosen[row]] if attention is not None else None,
                    image=crops[row] if crops is not None else None,
                )
        for index in batch["indices"]:
            yield results[index]
        if progress is not None:
            progress(len(batch["indices"]))


def _attention_grids(output: Any) -> np.ndarray:
    """ModelOutput attention (B, C, N) -> (B, C, h, w) float32 numpy."""
    height, width = output.attention_hw
    attention = output.attention.float().cpu().numpy()
    return attention.reshape(*attention.shape[:2], height, width)


class PredictionWriter:
    """Writes predictions as they come: a JSON array of records or CSV rows.

    JSON record: ``{"image": path, "labels": [names], "scores": [probabilities]}``, highest
    first; with ``all_scores`` also ``"probabilities": {name: p}`` for every class. CSV: the
    columns ``image,labels,scores`` with ``;`` between labels (the dataset CSV format, plus
    scores).
    """

    def __init__(
        self, stream: IO[str], fmt: str, class_names: Sequence[str], all_scores: bool = False
    ) -> None:
        if fmt not in ("json", "csv"):
            raise ValueError(f"unknown output format {fmt!r}; choose json or csv")
        self.stream = stream
        self.fmt = fmt
        self.class_names = list(class_names)
        self.all_scores = all_scores
        self.count = 0
        if fmt == "csv":
            self._csv = csv.writer(stream)
            header = ["image", "labels", "scores", *(self.class_names if all_scores else [])]
            self._csv.writerow(header)
        else:
            stream.write("[")

    def write(self, prediction: ImagePrediction) -> None:
        assert prediction.probabilities is not None and prediction.classes is not None
        labels = [self.class_names[c] for c in prediction.classes]
        scores = [round(float(prediction.probabilities[c]), 6) for c in prediction.classes]
        if self.fmt == "csv":
            row = [str(prediction.path), ";".join(labels), ";".join(f"{s:.6f}" for s in scores)]
            if self.all_scores:
                row += [f"{p:.6f}" for p in prediction.probabilities]
            self._csv.writerow(row)
        else:
            record: dict[str, Any] = {
                "image": str(prediction.path),
                "labels": labels,
                "scores": scores,
            }
            if self.all_scores:
                record["probabilities"] = {
                    name: round(float(p), 6)
                    for name, p in zip(self.class_names, prediction.probabilities, strict=True)
                }
            self.stream.write(
                ("\n" if self.count == 0 else ",\n") + json_text(record, None).rstrip()
            )
        self.count += 1
        self.stream.flush()

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("\n]\n" if self.count else "]\n")
        self.stream.flush()
