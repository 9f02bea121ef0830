"""What a run says at its start, as timm / Lightning do: the model's size (parameters,
trainable parameters, FLOPs of one image at the run's input size, counted by
``torch.utils.flop_counter.FlopCounterMode``) and the resolved config, one line per section."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def count_flops(model: nn.Module, image_size: int) -> int | None:
    """FLOPs of one forward pass of a (1, 3, image_size, image_size) image in eval mode, or
    None when the model cannot be counted (its mode is restored either way)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        parameter = next(model.parameters())
    except StopIteration:
        return None
    was_training = model.training
    image = torch.zeros(1, 3, image_size, image_size, device=parameter.device)
    image = image.to(parameter.dtype if parameter.is_floating_point() else torch.float32)
    try:
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
        return int(counter.get_total_flops())
    except Exception:  # a model FlopCounterMode cannot trace: say nothing rather than stop
        return None
    finally:
        model.train(was_training)


def _millions(n: int) -> str:
    return f"{n / 1e6:,.2f} M" if n >= 1e5 else f"{n:,}"


def model_line(model: nn.Module, name: str, backbone: str, image_size: int) -> str:
    """``model: mlcnc (resnet50): 25.61 M parameters, 25.61 M trainable, 4.13 GFLOPs per
    image at 224 px``."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops = count_flops(model, image_size)
    cost = (
        f", {flops / 1e9:.3g} GFLOPs per image at {image_size} px (forward)"
        if flops is not None
        else ""
    )
    return (
        f"model: {name} ({backbone}): {_millions(total)} parameters, "
        f"{_millions(trainable)} trainable{cost}"
    )


def config_lines(config: dict[str, Any]) -> list[str]:
    """The resolved config, one line per section: ``config data: name=csv image_size=224``."""
    lines = []
    for section, values in config.items():
        if isinstance(values, dict):
            items = " ".join(f"{k}={_short(v)}" for k, v in values.items())
            lines.append(f"config {section}: {items}")
        else:
            lines.append(f"config {section}={_short(values)}")
    return lines


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    return str(value).replace(" ", "")
