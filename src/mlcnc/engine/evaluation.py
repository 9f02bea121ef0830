"""Evaluation: predict on every rank, gather all logits, then compute AP once.

AP cannot be averaged over ranks, so each rank predicts its shard, ``fabric.all_gather``
collects the logits, targets and dataset indices of all ranks, and the duplicates that a
padded DistributedSampler adds are dropped by index before any metric is computed.

Precision: a model is evaluated in the dtype of its weights with autocast off (float32
for ``32-true`` and the ``*-mixed`` precisions, whose weights are float32; bfloat16 /
float16 / float64 for the ``*-true`` ones), its inputs cast to that dtype. Every model's
logits are then kept as float32 and AP ranks the logits themselves: a bf16 linear layer
under autocast would tie many scores, and float32 sigmoids are exactly 1.0 above a logit
of about 16.6, so ranking probabilities would tie the most confident images. Probabilities
(float64 sigmoids of those logits) are used only where a threshold applies (F1).
Shapes: N images, C classes, P projection width, W world size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from mlcnc import metrics
from mlcnc.groups import MAP_GROUPS as GROUP_COLUMNS


@dataclass
class Predictions:
    """Everything one evaluation pass gives, ordered by dataset index, without duplicates.

    indices (N,), logits (N, C) float32, targets (N, C) uint8, projections (N, C, P)
    float32 when the model gives them and they were asked for.
    """

    indices: np.ndarray
    logits: np.ndarray
    targets: np.ndarray
    projections: np.ndarray | None = None

    @property
    def probabilities(self) -> np.ndarray:
        """(N, C) float64 sigmoids of the logits, for thresholds (F1); rank the logits."""
        return torch.sigmoid(torch.from_numpy(self.logits).double()).numpy()


def merge_gathered(
    indices: np.ndarray, *arrays: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Rows gathered from all ranks -> one row per dataset index, sorted by index.

    indices: (W, n) or (M,) dataset indices; arrays: matching (W, n, ...) or (M, ...).
    A padded sampler repeats some indices on the last ranks; those repeats are the same image
    and are kept once.
    """
    flat = np.asarray(indices).reshape(-1)
    unique, first = np.unique(flat, return_index=True)
    merged = []
    for array in arrays:
        array = np.asarray(array)
        merged.append(array.reshape(flat.shape[0], *array.shape[indices.ndim :])[first])
    return unique, tuple(merged)


def eval_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    num_workers: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """A sequential loader over this rank's shard (padded so every rank has the same count)."""
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=False
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def split_eval_loader(
    split: Any, cfg: Any, batch_size: int | None = None, pin_memory: bool = False
) -> DataLoader:
    """The evaluation loader of a run's ``split`` (``mlcnc.data`` split) with the run's
    eval transform and pixel limit; batch ``batch_size`` or the run's eval batch size."""
    from mlcnc.data import build_dataset
    from mlcnc.data import transforms as data_transforms

    return eval_loader(
        build_dataset(
            split,
            data_transforms.transforms_for(cfg.data, cfg.method.recipe, train=False),
            max_pixels=cfg.data.max_image_pixels,
        ),
        batch_size or cfg.train.eval_batch_size or max(cfg.optim.batch_size, 1),
        cfg.data.num_workers,
        pin_memory=pin_memory,
    )


def predict(
    model: nn.Module,
    loader: DataLoader,
    fabric: Any,
    keep_projections: bool = False,
    limit_batches: int | None = None,
) -> Predictions:
    """``predict_models`` for one model."""
    return predict_models(
        {"model": model}, loader, fabric, "model" if keep_projections else None, limit_batches
    )["model"]


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of a model's first floating-point parameter (or buffer); float32 if none."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


@contextmanager
def inference_precision(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Autocast off and ``dtype`` as the default dtype (as Fabric's ``*-true`` precisions set
    it during training), so a model runs entirely in the dtype of its weights."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        torch.set_default_dtype(previous)


def forward_logits(
    model: nn.Module, images: torch.Tensor, **kwargs: Any
) -> tuple[Any, torch.Tensor]:
    """``model(images)`` in the dtype of the model's weights (images cast to it, autocast
    off; see the module docstring) -> (its ModelOutput, float32 logits)."""
    dtype = model_dtype(model)
    with inference_precision(images.device, dtype):
        output = model(images.to(dtype), **kwargs)
    return output, output.logits.float()


@torch.inference_mode()
def predict_models(
    models: Mapping[str, nn.Module],
    loader: DataLoader,
    fabric: Any,
    keep_projections: str | None = None,
    limit_batches: int | None = None,
    channels_last: bool = False,
) -> dict[str, Predictions]:
    """Run every model of ``models`` (plain modules, not DDP wrappers) over this rank's loader
    in one pass, so each image is decoded once for all of them (e.g. the regular and the EMA
    model), each in the dtype of its weights (see the module docstring); gather every rank's
    rows and merge them (see :func:`merge_gathered`). ``keep_projections`` names the model
    whose projections to keep. Inference mode (no autograd bookkeeping); ``channels_last``
    feeds NHWC images (for models converted to that format).
    """
    was_training = {name: model.training for name, model in models.items()}
    for model in models.values():
        model.eval()
    indices, targets = [], []
    logits: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    projections: list[torch.Tensor] = []
    for batch_index, (images, batch_targets, batch_indices) in enumerate(loader):
        if limit_batches is not None and batch_index >= limit_batches:
            break
        images = images.to(fabric.device, non_blocking=True)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        for name, model in models.items():
            output, batch_logits = forward_logits(model, images)
            logits[name].append(batch_logits)
            if name == keep_projections and output.projections is not None:
                projections.append(output.projections.float())
        targets.append(batch_targets.to(fabric.device).to(torch.uint8))
        indices.append(batch_indices.to(fabric.device).long())
    for name, model in models.items():
        model.train(was_training[name])
    local = {"indices": torch.cat(indices), "targets": torch.cat(targets)}
    local |= {f"logits/{name}": torch.cat(rows) for name, rows in logits.items()}
    if projections:
        local["projections"] = torch.cat(projections)
    if fabric.world_size > 1:
        local = fabric.all_gather(local)  # each (W, n, ...): every rank has n rows (padding)
    local = {k: v.cpu().numpy() for k, v in local.items()}
    keys = [k for k in local if k != "indices"]
    unique, merged = merge_gathered(local["indices"], *(local[k] for k in keys))
    values = dict(zip(keys, merged, strict=True))
    return {
        name: Predictions(
            indices=unique,
            logits=values[f"logits/{name}"],
            targets=values["targets"],
            projections=values.get("projections") if name == keep_projections else None,
        )
        for name in models
    }


def score_predictions(
    predictions: Predictions,
    groups: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    threshold: float = 0.5,
    scores: str = "logits",
) -> dict[str, Any]:
    """mAP total / by group (in %) and per-class AP (C,), ranking the logits or their
    softmax over classes (``scores``, see ``metrics.ranking_scores``); CF1 / OF1 at the
    sigmoid probability ``threshold`` (0.5 = logit 0) whichever ``scores`` is."""
    ranked = metrics.ranking_scores(predictions.logits, scores)
    ap = metrics.average_precision(ranked, predictions.targets)
    return {
        "map": metrics.group_mean_ap(ap, groups, class_names),
        "ap": ap,
        "f1": metrics.f1_scores(predictions.probabilities, predictions.targets, threshold),
    }


def classifier_matrix(model: nn.Module) -> torch.Tensor | None:
    """The (D, C) classifier an NC3 diagnostic compares class means with, if the model has one."""
    head = getattr(model, "head", None)
    classifier = getattr(head, "classifier", None)
    if isinstance(classifier, torch.Tensor) and classifier.ndim == 2:
        return classifier.detach().float().cpu()
    return None


def collapse_diagnostics(predictions: Predictions, model: nn.Module) -> dict[str, float]:
    """NC1 / NC2 / NC3 of the per-class projections (scalars only, for the metrics log)."""
    if predictions.projections is None:
        return {}
    result = metrics.neural_collapse(
        predictions.projections, predictions.targets, classifier_matrix(model)
    )
    return {
        k: float(v)
        for k, v in result.items()
        if k in ("nc1", "nc2_equinorm", "nc2_cos_mean_dev", "nc2_cos_max_dev", "nc3")
        and v is not None
    }


def format_map_table(rows: Sequence[tuple[str, Mapping[str, float]]], title: str = "") -> str:
    """A text table: one row per (label, {total, head, medium, tail}) in mAP %."""
    width = max([len(label) for label, _ in rows] + [10])
    header = f"{'':<{width}}  " + "  ".join(f"{c.capitalize():>7}" for c in GROUP_COLUMNS)
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for label, values in rows:
        cells = "  ".join(f"{values.get(c, float('nan')):>7.2f}" for c in GROUP_COLUMNS)
        lines.append(f"{label:<{width}}  {cells}")
    return "\n".join(lines)
