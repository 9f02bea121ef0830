"""``mlcnc benchmark`` fanned out gives the serial table: ``--jobs 2`` on this machine and
``--launcher slurm`` on the local SLURM cluster, 2 methods x 2 seeds of tiny runs; a
rerun reads the finished runs back and trains only the missing one."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from helpers import write_tiny_csv_dataset
from mlcnc.cli import main

pytestmark = pytest.mark.slow

METHODS = "erm,asl"
OVERRIDES = [
    "method.backbone=test_resnet", "method.pretrained=false", "optim.epochs=1",
    "optim.batch_size=5", "data.epoch_length=10", "train.accelerator=cpu",
    "train.progress=false", "train.plots=false", "train.num_threads=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fanout")
    data = write_tiny_csv_dataset(root / "data")
    config = root / "tiny.yaml"
    config.write_text(
        "data:\n  name: csv\n"
        + "".join(f"  {s}_csv: {data / f'{s}.csv'}\n" for s in ("train", "val", "test"))
        + "  image_size: 24\n  num_workers: 0\n  head_threshold: 10\n  tail_threshold: 4\n"
    )
    started = time.perf_counter()
    assert _bench(config, root / "serial") == 0
    print(f"serial benchmark: {time.perf_counter() - started:.1f} s")
    return {"root": root, "config": config, "serial": root / "serial"}


def _bench(config: Path, out: Path, *options: str) -> int:
    argv = ["benchmark", "--config", str(config), "--methods", METHODS, "--seeds", "0,1",
            "--output", str(out), "--no-plot", *options, *OVERRIDES]  # fmt: skip
    return main(argv)


def _table(out: Path) -> str:
    return (out / "results.csv").read_text()


def test_jobs_2_gives_the_serial_table(serial, capsys) -> None:
    out = serial["root"] / "jobs2"
    started = time.perf_counter()
    assert _bench(serial["config"], out, "--jobs", "2") == 0
    print(f"--jobs 2 benchmark: {time.perf_counter() - started:.1f} s")
    assert _table(out) == _table(serial["serial"])
    logs = sorted(p.name for p in (out / "logs").glob("*.log"))
    assert logs == ["asl-seed0.log", "asl-seed1.log", "erm-seed0.log", "erm-seed1.log"]
    assert "cores [" in capsys.readouterr().out  # each run pinned


@pytest.mark.slurm
def test_slurm_launcher_gives_the_serial_table_and_resubmits_only_missing_runs(
    serial, slurm_cluster, monkeypatch, capsys
) -> None:
    for key, value in slurm_cluster.items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    out = serial["root"] / "slurm"
    started = time.perf_counter()
    assert _bench(serial["config"], out, "--launcher", "slurm", "--slurm-time", "10") == 0
    print(f"--launcher slurm benchmark: {time.perf_counter() - started:.1f} s")
    assert _table(out) == _table(serial["serial"])
    assert (out / "slurm" / "jobs.json").is_file()
    capsys.readouterr()
    # One run lost: the rerun reads three back and submits one.
    shutil.rmtree(out / "runs" / "asl-seed1")
    assert _bench(serial["config"], out, "--launcher", "slurm", "--slurm-time", "10") == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier") == 3 and "submitted 1 runs" in printed
    assert _table(out) == _table(serial["serial"])


def test_a_failed_run_is_reported_with_its_log(serial, capsys) -> None:
    out = serial["root"] / "failing"
    # asl's runs fail when training starts (a training CSV that does not exist).
    missing = serial["root"] / "missing.csv"
    code = _bench(serial["config"], out, "--jobs", "2", f"asl:data.train_csv={missing}")
    assert code == 1
    err = capsys.readouterr().err
    assert "asl-seed0" in err and "asl-seed1" in err and "log: " in err
    assert (out / "results.csv").is_file() and "erm" in _table(out) and "asl" not in _table(out)
