"""Using a finished run: rebuild a trained model from its checkpoint alone, evaluate it.

A checkpoint holds the resolved config, the class names and training frequencies and the
weights, so nothing else is needed: the model is rebuilt without pretrained weights (they
are overwritten anyway, and nothing is downloaded) and every key must load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlcnc.config import Config, config_from_dict, merge_data_overrides
from mlcnc.engine.checkpoint import LAST, CheckpointError, load_checkpoint, resolve_checkpoint
from mlcnc.engine.evaluation import (
    eval_loader,
    format_map_table,
    predict,
    score_predictions,
)
from mlcnc.metrics import per_class_f1


@dataclass
class TrainedModel:
    """A trained model ready for inference.

    model:      in eval mode, on ``map_location``.
    transform:  the evaluation transform (uint8 image tensor (3, H, W) -> normalised float).
    """

    model: nn.Module
    config: Config
    class_names: list[str]
    class_freq: np.ndarray
    transform: Callable[[torch.Tensor], torch.Tensor]
    image_size: int
    checkpoint: Path
    uses_ema: bool


def load_trained(
    path: str | Path, use_ema: bool = True, map_location: str | torch.device = "cpu"
) -> TrainedModel:
    """The model of a checkpoint (or of a run folder's last.ckpt), EMA weights by default
    (the regular weights when the run had no EMA)."""
    ckpt_path = resolve_checkpoint(path, LAST)
    state = load_checkpoint(ckpt_path, map_location="cpu")
    cfg = config_from_dict(state["config"])
    return _rebuild(state, cfg, ckpt_path, use_ema, map_location)


def _rebuild(
    state: dict[str, Any],
    cfg: Config,
    ckpt_path: Path,
    use_ema: bool,
    map_location: str | torch.device,
) -> TrainedModel:
    from mlcnc.data import transforms as data_transforms
    from mlcnc.methods import build_method

    class_names = list(state["class_names"])
    class_freq = np.asarray(state["class_freq"], dtype=np.int64)
    method_cfg = dataclasses.replace(cfg.method, pretrained=False)  # weights come from the file
    num_samples = state.get("num_train_samples")
    model = build_method(method_cfg, len(class_names), class_freq, num_samples=num_samples).model
    weights = state["ema"] if use_ema and state.get("ema") is not None else state["model"]
    try:
        model.load_state_dict(weights)  # strict: every key must match
    except RuntimeError as error:
        detail = next(
            (line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error)
        )
        raise CheckpointError(
            f"{ckpt_path}: its weights do not fit the model its config and its "
            f"{len(class_names)} class names describe ({detail}); the file was changed or "
            "comes from another mlcnc version"
        ) from error
    model.to(map_location).eval()
    return TrainedModel(
        model=model,
        config=cfg,
        class_names=class_names,
        class_freq=class_freq,
        transform=data_transforms.build_transforms(
            cfg.method.recipe, cfg.data.image_size, train=False
        ),
        image_size=cfg.data.image_size,
        checkpoint=ckpt_path,
        uses_ema=weights is state.get("ema"),
    )


def evaluate_checkpoint(
    path: str | Path,
    data_overrides: Sequence[str] = (),
    split: str = "test",
    threshold: float = 0.5,
    batch_size: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint's regular and EMA weights on a split of its dataset.

    data_overrides: ``key=value`` for the ``data:`` part (``root=...`` or ``data.root=...``),
    e.g. to point at the images on this machine. Returns a JSON-ready dict: for each of
    ``regular`` / ``ema``, the mAP table (total, head, medium, tail in %), CF1 / OF1 and
    per-class AP and F1 with training frequency and group; plus ``table`` (text).
    """
    from lightning.fabric import Fabric

    from mlcnc.data import build_dataset, build_splits
    from mlcnc.data.longtail import class_groups

    ckpt_path = resolve_checkpoint(path, LAST)
    state = load_checkpoint(ckpt_path, map_location="cpu")
    saved = state["config"]
    cfg = config_from_dict({**saved, "data": merge_data_overrides(saved["data"], data_overrides)})

    splits = build_splits(cfg.data)
    if split not in splits:
        raise ValueError(
            f"dataset {cfg.data.name!r} has no {split!r} split; it has {sorted(splits)}"
        )
    class_names = list(state["class_names"])
    if list(splits[split].class_names) != class_names:
        raise ValueError(
            f"the {split} split's classes differ from the checkpoint's: "
            f"{list(splits[split].class_names)[:5]}... vs {class_names[:5]}..."
        )
    class_freq = np.asarray(state["class_freq"], dtype=np.int64)
    groups = class_groups(class_freq, head=cfg.data.head_threshold, tail=cfg.data.tail_threshold)
    group_of = {int(c): name for name, indices in groups.items() for c in indices}

    accelerator = device or ("cuda" if torch.cuda.is_available() else "cpu")
    fabric = Fabric(accelerator=accelerator, devices=1, precision="32-true")
    from mlcnc.data import transforms as data_transforms

    transform = data_transforms.build_transforms(
        cfg.method.recipe, cfg.data.image_size, train=False, eval_flip=cfg.data.eval_flip
    )
    loader = eval_loader(
        build_dataset(splits[split], transform, cfg.data.skip_bad_images),
        batch_size or max(cfg.optim.batch_size, 1),
        cfg.data.num_workers,
        pin_memory=fabric.device.type == "cuda",
    )
    result: dict[str, Any] = {
        "checkpoint": str(ckpt_path),
        "epoch": int(state["epoch"]),
        "dataset": cfg.data.name,
        "split": split,
        "num_images": len(splits[split]),
        "threshold": threshold,
        "groups": {name: [class_names[int(c)] for c in idx] for name, idx in groups.items()},
        "models": {},
    }
    variants = [("regular", False)] + ([("ema", True)] if state.get("ema") is not None else [])
    rows = []
    for name, use_ema in variants:
        trained = _rebuild(state, cfg, ckpt_path, use_ema, fabric.device)
        predictions = predict(trained.model, loader, fabric)
        scored = score_predictions(predictions, groups, class_names, threshold)
        class_f1 = per_class_f1(predictions.scores, predictions.targets, threshold)
        result["models"][name] = {
            "map": scored["map"],
            "f1": scored["f1"],
            "per_class": [
                {
                    "class": class_names[c],
                    "train_positives": int(class_freq[c]),
                    "test_positives": int(predictions.targets[:, c].sum()),
                    "group": group_of.get(c, ""),
                    "ap": _percent(scored["ap"][c]),
                    "f1": float(class_f1[c]),
                }
                for c in range(len(class_names))
            ],
        }
        rows.append((name, scored["map"]))
    result["table"] = format_map_table(
        rows, title=f"{split} mAP (%) of {ckpt_path} (epoch {result['epoch']})"
    )
    return result


def _percent(value: float) -> float | None:
    return None if np.isnan(value) else float(100.0 * value)


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with NaN replaced by None (JSON has no NaN)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, float) and value != value:
            return None
        if isinstance(value, np.generic):
            return clean(value.item())
        return value

    return clean(result)
