"""The one check of ``--device`` (evaluate, predict, inspect): an argparse type, so a device
this machine lacks (``cuda`` without a GPU) or a name PyTorch does not run here (``tpu``)
is argparse's one line naming the option, exit 2, before anything is loaded. ``train``
checks ``train.accelerator`` the same way (``mlcnc.engine.setup.make_fabric``)."""

from __future__ import annotations

import argparse
import re

DEVICES = "auto, cpu, cuda, cuda:N or mps"
_FORM = re.compile(r"^(auto|cpu|cuda|mps)(?::(\d+))?$")


def device_option(text: str) -> str:
    """``auto`` (CUDA when there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or
    ``mps``, available on this machine; returned lower-cased."""
    name = text.strip().lower()
    found = _FORM.match(name)
    if found is None or (found.group(2) is not None and found.group(1) != "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use {DEVICES}")
    kind, index = found.group(1), found.group(2)
    if kind in ("auto", "cpu"):
        return name
    import torch

    if kind == "mps" and not (torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no MPS device; use cpu")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(
                f"{text!r}: PyTorch sees no CUDA GPU on this machine; use cpu (or auto)"
            )
        if index is not None and int(index) >= count:
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
            )
    return name
