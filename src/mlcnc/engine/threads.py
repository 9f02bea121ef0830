"""The automatic ``train.num_threads``: how many intra-op threads a training process uses.

Rule (``auto_num_threads``):

- CPU training: every core this process may use, whatever the number of loader workers.
  Training on a CPU is compute-bound: a forward + backward of EfficientNet-Lite0 costs tens
  of ms per image, decoding and augmenting a JPEG a few ms, so the workers are idle most of
  the time and a core kept free for them sits mostly unused. Measured on a 2-core machine
  (``benchmarks/bench_train.py``, the synthetic config at 112 px, MLC-NC, batch 32): two
  threads beat one with 0 and with 2 workers (figures in the docstring of
  ``auto_num_threads``).
- GPU training: the cores minus the workers (at least 1). There the loader is what can
  starve the GPU (it needs thousands of decoded images per second), and the training
  process's own threads only run small CPU ops, so the cores go to the workers. Not
  measured here (no GPU on the machine the rule was measured on); ``benchmarks/gpu_check.py``
  reports the loader's per-worker rate.

``available_cores`` counts the cores the process may run on (its affinity mask, and a
cgroup CPU quota when one is set, as in containers), not the machine's.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(path: Path = CGROUP_CPU_MAX) -> int | None:
    """Cores allowed by a cgroup v2 CPU quota (``cpu.max`` = "quota period", rounded up),
    None without a quota or outside a cgroup."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup quota."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # macOS, Windows
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit is not None else cores)


def auto_num_threads(
    num_workers: int, cores: int | None = None, *, accelerator: str = "cpu"
) -> int:
    """Intra-op threads for a training process with ``num_workers`` loader workers on
    ``cores`` cores (None: :func:`available_cores`); see the module docstring for the rule.

    ``accelerator``: ``cpu`` (the model runs on the CPU) or anything else (``cuda``, ``gpu``,
    ``mps``: the model runs on an accelerator).
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    cores = available_cores() if cores is None else cores
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    if accelerator == "cpu":
        return cores
    return max(1, cores - num_workers)
