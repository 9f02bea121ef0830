"""``mlcnc export RUN --format weights``: the selected model's weights alone, to ship.

A training checkpoint carries the optimiser state, the EMA beside the regular weights and
the epoch history (a ResNet-18 run's is several times the model). The weights file holds
the one variant the run selected (or the one asked for) as ``model``, with the resolved
config, the class names and frequencies and the selection: a format-2 checkpoint without
optimiser, EMA or history, which ``load_trained`` / ``evaluate`` / ``predict`` / ``export``
read like any checkpoint (``torch.load(..., weights_only=True)`` too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlcnc.engine.checkpoint import FORMAT, check_finite_weights, save_checkpoint
from mlcnc.engine.selection import WEIGHTS, choose_weights

SUFFIX = ".weights.pt"


def weights_state(state: dict[str, Any], use_ema: bool, source: Path) -> dict[str, Any]:
    """The shippable state of a loaded checkpoint ``state``: its ``ema`` or ``model``
    weights as ``model``, nothing of the training but what loading needs."""
    weights = state["ema"] if use_ema else state["model"]
    variant = "ema" if use_ema else "regular"
    recorded = state.get("selection") if isinstance(state.get("selection"), dict) else {}
    selection = {
        **(recorded or {}),
        "variant": "regular",  # the file's only weights
        "epoch": int(state.get("epoch", (recorded or {}).get("epoch", 0)) or 0),
        "exported": {"from": str(source), "weights": variant},
    }
    selection.setdefault("rule", "last")
    selection.setdefault("checkpoint", source.name)
    return {
        "format": FORMAT,
        "model": {k: v.detach().clone() for k, v in weights.items()},
        "ema": None,
        "config": state["config"],
        "class_names": list(state["class_names"]),
        "class_freq": state["class_freq"],
        "num_train_samples": state.get("num_train_samples"),
        "epoch": state.get("epoch"),
        "step": state.get("step"),
        "metrics": {},
        "best": None,
        "selection": selection,
        "precision": state.get("precision"),
        "history": None,
        "test_ap": None,
        "data": state.get("data") or {"class_names": list(state["class_names"])},
    }


def export_weights(
    path: str | Path,
    out: str | Path | None = None,
    checkpoint: str | None = None,
    use_ema: bool | None = None,
) -> tuple[Path, str]:
    """Write the weights file of a run folder or checkpoint; (its path, the "loaded ..."
    line of the weights chosen). Default ``out``: beside the checkpoint, ``*.weights.pt``."""
    choice = choose_weights(path, checkpoint, use_ema)
    weights = choice.state["ema"] if choice.use_ema else choice.state["model"]
    check_finite_weights(weights, choice.checkpoint, "EMA" if choice.use_ema else "regular")
    target = Path(out) if out else choice.checkpoint.with_name(choice.checkpoint.stem + SUFFIX)
    state = weights_state(choice.state, choice.use_ema, choice.checkpoint)
    save_checkpoint(state, target)
    return target, choice.message


def describe_weights(state: dict[str, Any]) -> str:
    """``EMA weights of best.ckpt`` for a weights file's selection."""
    exported = (state.get("selection") or {}).get("exported") or {}
    return f"{WEIGHTS.get(exported.get('weights'), 'weights')} of {exported.get('from', '?')}"


__all__ = ["SUFFIX", "describe_weights", "export_weights", "weights_state"]
