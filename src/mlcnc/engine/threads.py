"""The automatic ``train.num_threads``: how many intra-op threads a training process uses.

Rule (``auto_num_threads``), with ``cores`` the cores other processes leave idle
(``idle_cores``: the process's cores minus the cores other processes keep busy, sampled
from ``/proc/stat`` when the run starts):

- CPU training: all of those cores, whatever the number of loader workers. Training on a CPU
  is compute-bound (a forward + backward of EfficientNet-Lite0 costs tens of ms per image,
  decoding and augmenting a JPEG 1-5 ms), so the workers are idle most of the time and a
  core kept free for them sits mostly unused.
- GPU training: those cores minus the workers (at least 1): there the loader is what can
  starve the GPU, and the training process only runs small CPU ops. Not measured (no GPU
  where the rule was measured); ``benchmarks/gpu_check.py`` reports the loader's rate.

Why the load matters (``benchmarks/bench_train.py``, MLC-NC, the synthetic config at
112 px, batch 32, on a 2-core machine shared with other jobs, load 3-9): one thread gave
9.4 img/s with 2 workers and 16.2 with 0 (medians of 3), two threads 5.1 and 3.1 (as low
as 2.5, once 21.2 when the load dropped). An OpenMP thread that the scheduler takes off its
core stalls every parallel region of the others, so threads beyond the idle cores cost far
more than they give. On the same machine when it was quiet (load < 2 with this run), two
threads beat one: 34.1 vs 23.4 img/s with 2 workers, 34.3 vs 22.8 with 0 (medians of 2,
alternated; ``benchmarks/RESULTS.md``).

``available_cores`` counts the cores the process may run on (its affinity mask, and a
cgroup CPU quota when one is set, as in containers), not the machine's.
"""

from __future__ import annotations

import math
import os
import time
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


PROC_STAT = Path("/proc/stat")


def busy_cores_now(window: float = 0.3, stat: Path = PROC_STAT) -> float | None:
    """Cores other processes keep busy right now: the machine's busy fraction over ``window``
    seconds (``/proc/stat``, this process sleeping meanwhile) times its CPU count; None where
    ``/proc/stat`` cannot be read (not Linux)."""

    def sample() -> tuple[int, int] | None:
        try:
            fields = stat.read_text().splitlines()[0].split()
        except (OSError, IndexError):
            return None
        if not fields or fields[0] != "cpu":
            return None
        ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(ticks), ticks[3] + ticks[4]

    first = sample()
    time.sleep(window)
    second = sample()
    if first is None or second is None or second[0] <= first[0]:
        return None
    total, idle = second[0] - first[0], second[1] - first[1]
    return (1.0 - idle / total) * (os.cpu_count() or 1)


def idle_cores(cores: int | None = None, load: float | None = None) -> int:
    """Cores that other processes leave idle: ``cores`` (None: :func:`available_cores`)
    minus the cores others keep busy, rounded to the nearest whole core, at least 1.

    ``load`` None measures it now (:func:`busy_cores_now`, a 0.3 s sample), falling back to
    the 1-minute load average rounded down. Not the load average first: it lags by minutes,
    still counting processes that just ended. Measured: a quiet 2-core machine right after a
    run showed 1.8, and the default run then took 1 thread at 23 img/s instead of 2 at 35.
    Call it before the run starts its own workers, so that it counts others only.
    """
    cores = available_cores() if cores is None else cores
    if load is None:
        busy = busy_cores_now()
        if busy is not None:
            load = float(round(busy))
        else:
            load = math.floor(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0.0
    if cores < 1 or load < 0:
        raise ValueError(f"need cores >= 1 and load >= 0, got {cores} and {load}")
    return max(1, cores - math.floor(load))


def auto_num_threads(
    num_workers: int, cores: int | None = None, *, accelerator: str = "cpu"
) -> int:
    """Intra-op threads for a training process with ``num_workers`` loader workers on
    ``cores`` cores (None: :func:`idle_cores`, the cores other processes leave idle); see
    the module docstring for the rule.

    ``accelerator``: ``cpu`` (the model runs on the CPU) or anything else (``cuda``, ``gpu``,
    ``mps``: the model runs on an accelerator).
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    cores = idle_cores() if cores is None else cores
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    if accelerator == "cpu":
        return cores
    return max(1, cores - num_workers)
