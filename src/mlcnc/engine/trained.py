"""Using a finished run: rebuild a trained model from its checkpoint alone, evaluate it.

A checkpoint holds the resolved config, the class names and training frequencies and the
weights, so nothing else is needed: the model is rebuilt without pretrained weights (they
are overwritten anyway, and nothing is downloaded) and every key must load.

Which weights: given a run folder, the model the run selected (``mlcnc.engine.selection``:
best.ckpt's better variant on val, or the last epoch without val); ``checkpoint="best" |
"last"`` and ``use_ema`` choose explicitly; a checkpoint file uses the variant it records.

``evaluate_checkpoint`` runs the model as training evaluated it (the run's precision: the
weights' dtype, autocast off; the same evaluation batch and transform), so on the same
device it reproduces the metrics logged for that checkpoint.
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
from mlcnc.engine.checkpoint import CheckpointError, check_finite_weights
from mlcnc.engine.evaluation import (
    format_map_table,
    predict_models,
    score_predictions,
    split_eval_loader,
)
from mlcnc.engine.selection import WEIGHTS, WeightsChoice, choose_weights
from mlcnc.metrics import per_class_f1, scores_note


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
    selection: dict[str, Any] | None = None  # the run's selection as the checkpoint records it
    message: str = ""  # "loaded <checkpoint>, EMA weights (selected on ... at epoch 3)"


def load_trained(
    path: str | Path,
    use_ema: bool | None = None,
    map_location: str | torch.device = "cpu",
    checkpoint: str | None = None,
) -> TrainedModel:
    """The model of a run folder or checkpoint file, in float32, eval mode.

    By default the weights the run selected (see the module docstring); ``checkpoint``
    (``best`` / ``last``, run folders only) and ``use_ema`` choose explicitly (EMA asked of
    a run without one gives the regular weights, and ``message`` says so). A checkpoint of
    an older mlcnc, without a recorded selection: its regular weights.
    """
    choice = choose_weights(path, checkpoint, use_ema)
    cfg = config_from_dict(choice.state["config"])
    return _rebuild(choice, cfg, map_location)


def precision_dtype(precision: str | None) -> torch.dtype:
    """The weights' dtype under a Fabric precision: float64 for ``64-true``, bfloat16 /
    float16 for ``bf16-true`` / ``16-true``, else float32 (``*-mixed`` keep float32 weights)."""
    return {
        "64-true": torch.float64,
        "64": torch.float64,
        "bf16-true": torch.bfloat16,
        "16-true": torch.float16,
    }.get(str(precision), torch.float32)


def _rebuild(
    choice: WeightsChoice,
    cfg: Config,
    map_location: str | torch.device,
    dtype: torch.dtype = torch.float32,
) -> TrainedModel:
    from mlcnc.data import transforms as data_transforms
    from mlcnc.methods import build_method

    state = choice.state
    class_names = list(state["class_names"])
    class_freq = np.asarray(state["class_freq"], dtype=np.int64)
    method_cfg = dataclasses.replace(cfg.method, pretrained=False)  # weights come from the file
    num_samples = state["num_train_samples"]
    model = build_method(
        method_cfg, len(class_names), class_freq, num_samples=num_samples, class_names=class_names
    ).model
    model.to(dtype)  # first, so float64 / bf16 weights load without rounding
    weights = state["ema"] if choice.use_ema else state["model"]
    check_finite_weights(weights, choice.checkpoint, "EMA" if choice.use_ema else "regular")
    try:
        model.load_state_dict(weights)  # strict: every key must match
    except RuntimeError as error:
        detail = next(
            (line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error)
        )
        raise CheckpointError(
            f"{choice.checkpoint}: its weights do not fit the model its config and its "
            f"{len(class_names)} class names describe ({detail}); the file was changed or "
            "comes from another mlcnc version"
        ) from error
    model.to(map_location).eval()
    return TrainedModel(
        model=model,
        config=cfg,
        class_names=class_names,
        class_freq=class_freq,
        transform=data_transforms.transforms_for(
            cfg.data, cfg.method.recipe, train=False, deterministic=True
        ),
        image_size=cfg.data.image_size,
        checkpoint=choice.checkpoint,
        uses_ema=choice.use_ema,
        selection=choice.selection,
        message=choice.message,
    )


def evaluate_checkpoint(
    path: str | Path,
    data_overrides: Sequence[str] = (),
    split: str = "test",
    threshold: float = 0.5,
    batch_size: int | None = None,
    device: str | None = None,
    checkpoint: str | None = None,
    use_ema: bool | None = None,
    predictions_file: str | Path | None = None,
    per_class_thresholds: bool = False,
    scores: str | None = None,
) -> dict[str, Any]:
    """Evaluate a run folder's selected checkpoint (or a checkpoint file) on a split of its
    dataset, in the run's precision.

    Both the regular and the EMA weights are scored, the selected one marked (``selected``);
    ``use_ema`` scores only the one asked for; ``checkpoint`` (``best`` / ``last``) picks
    the file of a run folder. data_overrides: ``key=value`` for the ``data:`` part
    (``root=...`` or ``data.root=...``), e.g. to point at the images on this machine.
    Returns a dict (``mlcnc.io.jsonable`` makes it JSON): ``loaded`` (one line: which file
    and weights, and why), ``precision``, and for each of ``regular`` / ``ema``, the mAP
    table (total, head, medium, tail in %), CF1 / OF1 and per-class AP and F1 with training
    frequency and group; plus ``table`` (text). ``predictions_file``: also write each
    image's scores next to its true labels there (``mlcnc.analysis.predictions_file``).
    ``per_class_thresholds``: F1 and the predicted labels use a threshold per class tuned
    on the val split (``mlcnc.engine.thresholds``, stored in the run folder) instead of
    ``threshold``; the result's ``thresholds`` gives them per model. ``scores``: what AP
    ranks, ``logits`` or ``softmax`` over classes (``metrics.ranking_scores``;
    None: the run's ``train.eval_scores``), recorded as the result's ``scores``.
    """
    from mlcnc.data.longtail import class_groups

    given_scores = scores is not None
    choice = choose_weights(path, checkpoint, use_ema)
    state = choice.state
    saved = state["config"]
    cfg = config_from_dict({**saved, "data": merge_data_overrides(saved["data"], data_overrides)})
    evaluated = _split_to_evaluate(cfg, state, split)
    fabric = _device_fabric(device)
    # The precision the run trained in (as recorded; see checkpoint.upgrade_checkpoint).
    precision = state["precision"]
    loader = split_eval_loader(evaluated, cfg, batch_size, fabric.device.type == "cuda")
    # The variant loaded by default: the one the checkpoint's recorded selection names
    # (regular for an older checkpoint, or when it has no EMA).
    recorded = (choice.selection or {}).get("variant", "regular")
    selected = recorded if recorded == "regular" or state["ema"] is not None else "regular"
    class_freq = np.asarray(state["class_freq"], dtype=np.int64)
    groups = class_groups(class_freq, head=cfg.data.head_threshold, tail=cfg.data.tail_threshold)
    result = _result_header(choice, cfg, split, len(evaluated), threshold, selected, precision)
    result["scores"] = scores = scores or cfg.train.eval_scores
    if scores == "softmax" and len(state["class_names"]) < 2:
        from mlcnc.config import ConfigError
        from mlcnc.metrics import softmax_refusal

        setting = "--scores softmax" if given_scores else "the run's train.eval_scores=softmax"
        raise ConfigError(
            softmax_refusal(setting, f"the run ({path})", list(state["class_names"]))
            + ("" if given_scores else " (--scores logits)")
        )
    result["groups"] = {
        name: [state["class_names"][int(c)] for c in idx] for name, idx in groups.items()
    }
    models = _models_to_score(choice, cfg, fabric.device, use_ema, precision)
    rows = []
    limits: dict[str, Any] = {name: threshold for name in models}
    if per_class_thresholds:
        limits = _tuned_thresholds(choice, cfg, models, fabric, batch_size, result)
    predicted = predict_models(models, loader, fabric)
    if predictions_file is not None:
        result["predictions_file"] = _write_predictions(
            predictions_file, evaluated, state, predicted, limits
        )
    for name, predictions in predicted.items():
        scored = _scores(
            predictions, groups, list(state["class_names"]), class_freq, limits[name], scores
        )
        result["models"][name] = scored
        label = WEIGHTS[name].removesuffix(" weights")
        rows.append((f"{label} (selected)" if name == selected else label, scored["map"]))
    result["table"] = format_map_table(
        rows,
        title=f"{split} mAP (%) of {choice.checkpoint} (epoch {result['epoch']}, {precision}; "
        f"{scores_note(scores)})",
    )
    return result


def _device_fabric(device: str | None) -> Any:
    """A Fabric that only places tensors on ``device`` (None / "auto": a GPU if any;
    "cuda:1": that GPU); the precision is the run's own, applied by the caller."""
    from lightning.fabric import Fabric

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    devices = [chosen.index] if chosen.index is not None else 1
    return Fabric(accelerator=chosen.type, devices=devices, precision="32-true")


def _write_predictions(
    path: str | Path, evaluated: Any, state: dict[str, Any], predicted: Any, limits: Any
) -> str:
    """Each image's scores next to its true labels (``mlcnc.analysis.predictions_file``)."""
    from mlcnc.analysis.predictions_file import write_predictions

    write_predictions(path, evaluated.image_paths, list(state["class_names"]), predicted, limits)
    return str(path)


def _models_to_score(
    choice: Any, cfg: Config, device: torch.device, use_ema: bool | None, precision: str
) -> dict[str, Any]:
    """The models ``evaluate_checkpoint`` scores: both variants, or the one asked for, each
    rebuilt in the run's precision."""
    if use_ema is None:
        names = ["regular"] + (["ema"] if choice.state["ema"] is not None else [])
    else:
        names = [choice.variant]
    dtype = precision_dtype(precision)
    return {
        name: _rebuild(dataclasses.replace(choice, use_ema=name == "ema"), cfg, device, dtype).model
        for name in names
    }


def _tuned_thresholds(
    choice: Any, cfg: Config, models: dict[str, Any], fabric: Any, batch_size: Any, result: dict
) -> dict[str, Any]:
    """Per-class thresholds tuned on val for each model, recorded in ``result``."""
    from mlcnc.engine.thresholds import per_class_thresholds as tuned

    limits = tuned(choice, cfg, models, fabric, batch_size)
    names = choice.state["class_names"]
    result["thresholds"] = {
        name: dict(zip(names, map(float, limits[name]), strict=True)) for name in models
    }
    result["threshold"] = "per-class (tuned on val)"
    return limits


def _split_to_evaluate(cfg: Config, state: dict[str, Any], split: str) -> Any:
    """The checked ``split`` of the checkpoint's dataset, with the checkpoint's classes."""
    from mlcnc.data import build_splits
    from mlcnc.engine.data_check import checked_splits

    splits, _ = checked_splits(cfg.data, build_splits(cfg.data))
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
    return splits[split]


def _result_header(
    choice: WeightsChoice,
    cfg: Config,
    split: str,
    num_images: int,
    threshold: float,
    selected: str,
    precision: str,
) -> dict[str, Any]:
    """What ``evaluate_checkpoint`` returns besides the groups and the scores."""
    return {
        "checkpoint": str(choice.checkpoint),
        "loaded": choice.message,
        "selected": selected,
        "precision": precision,
        "epoch": int(choice.state["epoch"]),
        "dataset": cfg.data.name,
        "split": split,
        "num_images": num_images,
        "threshold": threshold,
        "groups": {},
        "models": {},
    }


def _scores(
    predictions: Any,
    groups: dict[str, np.ndarray],
    class_names: list[str],
    class_freq: np.ndarray,
    threshold: float,
    scores: str = "logits",
) -> dict[str, Any]:
    """mAP table, CF1 / OF1 and per-class rows of one model's predictions."""
    group_of = {int(c): name for name, indices in groups.items() for c in indices}
    scored = score_predictions(predictions, groups, class_names, threshold, scores)
    class_f1 = per_class_f1(predictions.probabilities, predictions.targets, threshold)
    return {
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


def _percent(value: float) -> float | None:
    return None if np.isnan(value) else float(100.0 * value)
