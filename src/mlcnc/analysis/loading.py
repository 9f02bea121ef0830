"""Loading a trained model for the predict / inspect / export commands."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mlcnc.analysis.preprocessing import Preprocessing, preprocessing_of


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the CUDA device when there is one, else the CPU; any other name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_for_inspection(
    checkpoint: str | Path,
    use_ema: bool | None = None,
    device: str | torch.device = "cpu",
    which: str | None = None,
) -> tuple[Any, Preprocessing]:
    """``mlcnc.engine.load_trained`` on a checkpoint file or run folder (by default the
    model the run selected; ``which`` = ``best`` / ``last`` and ``use_ema`` choose), the
    model moved to ``device`` in eval mode, and its preprocessing. ``trained.message`` says
    which weights were loaded."""
    from mlcnc.engine import load_trained

    trained = load_trained(checkpoint, use_ema=use_ema, map_location="cpu", checkpoint=which)
    trained.model.to(device).eval()
    return trained, preprocessing_of(trained.transform, trained.image_size)


def resolve_split(trained: Any, data: str, overrides: Sequence[str] = ()) -> tuple[Any, str]:
    """The images to inspect and a label for them: a CSV file in the dataset format (read
    with the model's class names), or a split name of the checkpoint's dataset, whose
    ``data:`` config ``overrides`` (``key=value`` or ``data.key=value``) may change, e.g.
    to point at the images on this machine."""
    from mlcnc.config import config_from_dict, config_to_dict, merge_data_overrides
    from mlcnc.data import DataConfig, build_splits, read_csv_split

    if data.endswith(".csv"):
        if overrides:
            raise ValueError("data overrides apply to the checkpoint's dataset, not to a CSV file")
        return read_csv_split(data, class_names=trained.class_names), data
    data_dict = merge_data_overrides(config_to_dict(trained.config.data), overrides)
    data_cfg = config_from_dict(data_dict, DataConfig, "data")
    splits = build_splits(data_cfg)
    if data not in splits:
        raise ValueError(
            f"dataset {data_cfg.name!r} has no {data!r} split (it has {', '.join(sorted(splits))}); "
            "or give a CSV file"
        )
    return splits[data], f"{data_cfg.name} {data}"


def check_images(
    trained: Any, inputs: Sequence[str | Path] | None, count: int
) -> tuple[torch.Tensor, str]:
    """Up to ``count`` real images, transformed for the model (count, 3, H, W), to check an
    export on, and where they came from: ``inputs`` (files and folders) if given, else the
    checkpoint's test split; unreadable files are passed over. Raises ValueError if fewer
    than 2 readable images are found."""
    from mlcnc.analysis.predict import find_images
    from mlcnc.data import BadImageError, build_splits, read_image

    if inputs:
        paths, source = find_images(inputs), "the given images"
    else:
        try:
            split = build_splits(trained.config.data)["test"]
        except Exception as error:  # the dataset may live on another machine
            raise ValueError(
                f"cannot read the checkpoint's test split to check the export on ({error}); "
                "pass --images"
            ) from None
        paths, source = split.image_paths, f"{split.source}"
    images = []
    for path in paths:
        if len(images) == count:
            break
        try:
            images.append(trained.transform(read_image(path)))
        except BadImageError:
            continue
    if len(images) < 2:
        raise ValueError(f"found {len(images)} readable images in {source}; need at least 2")
    return torch.stack(images), source
