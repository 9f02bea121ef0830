"""The automatic num_threads rule (mlcnc.engine.threads): a pure function of workers and cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlcnc.engine import threads
from mlcnc.engine.threads import (
    auto_num_threads,
    available_cores,
    cgroup_cpu_limit,
    idle_cores,
)


@pytest.mark.parametrize("cores", [1, 2, 3, 8, 16, 64])
@pytest.mark.parametrize("workers", [0, 1, 2, 4, 16, 32])
def test_cpu_training_uses_every_core_whatever_the_workers(cores: int, workers: int) -> None:
    assert auto_num_threads(workers, cores) == cores
    assert auto_num_threads(workers, cores, accelerator="cpu") == cores


@pytest.mark.parametrize(
    ("workers", "cores", "expected"),
    [(0, 16, 16), (4, 16, 12), (15, 16, 1), (16, 16, 1), (32, 16, 1), (2, 2, 1), (0, 1, 1)],
)
def test_accelerator_training_leaves_the_cores_to_the_workers(
    workers: int, cores: int, expected: int
) -> None:
    for accelerator in ("cuda", "gpu", "mps"):
        assert auto_num_threads(workers, cores, accelerator=accelerator) == expected


def test_result_is_always_between_one_and_the_cores() -> None:
    for cores in range(1, 20):
        for workers in range(0, 40):
            for accelerator in ("cpu", "cuda"):
                value = auto_num_threads(workers, cores, accelerator=accelerator)
                assert isinstance(value, int) and 1 <= value <= cores


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="num_workers"):
        auto_num_threads(-1, 4)
    with pytest.raises(ValueError, match="cores"):
        auto_num_threads(2, 0)


def test_default_cores_are_the_idle_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: 3)
    monkeypatch.setattr(threads, "busy_cores_now", lambda: 0.2)
    assert auto_num_threads(2) == 3
    assert auto_num_threads(2, accelerator="cuda") == 1
    monkeypatch.setattr(threads, "busy_cores_now", lambda: 6.7)  # a crowded machine
    assert auto_num_threads(2) == 1
    # Without /proc/stat: the load average, rounded down (it lags).
    monkeypatch.setattr(threads, "busy_cores_now", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.86, 0.0, 0.0))
    assert auto_num_threads(2) == 3
    monkeypatch.setattr(os, "getloadavg", lambda: (6.7, 5.0, 4.0))
    assert auto_num_threads(2) == 1


def test_busy_cores_are_read_from_proc_stat(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    samples = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  250 0 250 900 0 0 0 0 0 0\n"])
    real_sleep = threads.time.sleep
    monkeypatch.setattr(threads.time, "sleep", lambda s: stat.write_text(next(samples)))
    stat.write_text(next(samples))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    # 300 busy of 400 ticks: 3 of 4 cores busy.
    assert threads.busy_cores_now(stat=stat) == pytest.approx(3.0)
    monkeypatch.setattr(threads.time, "sleep", real_sleep)
    assert threads.busy_cores_now(stat=tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("cores", "load", "expected"),
    [(2, 0.0, 2), (2, 0.3, 2), (2, 0.86, 2), (2, 1.4, 1), (2, 6.7, 1), (16, 3.6, 13),
     (16, 0.49, 16), (1, 0.0, 1), (1, 9.0, 1)],
)  # fmt: skip
def test_idle_cores_subtract_the_busy_whole_cores(cores: int, load: float, expected: int) -> None:
    assert idle_cores(cores, load) == expected


def test_idle_cores_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        idle_cores(0, 0.0)
    with pytest.raises(ValueError):
        idle_cores(2, -1.0)


def test_cgroup_quota_is_read_and_rounded_up(tmp_path: Path) -> None:
    path = tmp_path / "cpu.max"
    path.write_text("max 100000\n")
    assert cgroup_cpu_limit(path) is None
    path.write_text("250000 100000\n")
    assert cgroup_cpu_limit(path) == 3
    path.write_text("50000 100000\n")
    assert cgroup_cpu_limit(path) == 1
    path.write_text("garbage\n")
    assert cgroup_cpu_limit(path) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_available_cores_respects_affinity_and_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert available_cores() == affinity
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 1)
    assert available_cores() == 1
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: affinity + 5)
    assert available_cores() == affinity
