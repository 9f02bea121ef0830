"""``mlcnc train`` under ``srun`` on the local SLURM cluster: 2 tasks == 1 process (the
criteria of tests/engine/test_ddp.py), one run folder, and a job cancelled mid-epoch
(``scancel``) continues with ``--resume auto``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers import TESTS, TINY_METHOD, write_tiny_csv_dataset

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# `mlcnc train` (mlcnc.cli.main) with the tiny test method registered and the training
# transform made deterministic, as in test_ddp.py; MLCNC_TEST_STEP_SLEEP slows each
# training step down, so that a cancellation lands mid-epoch.
CLI = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import helpers
    helpers.register_tiny_method()
    from mlcnc.data import transforms

    real = transforms.build_transforms
    transforms.build_transforms = lambda recipe, size, train, **kw: real(recipe, size, False)
    pause = float(os.environ.get("MLCNC_TEST_STEP_SLEEP", "0"))
    if pause:
        forward = helpers.CountingBCE.forward
        def slow(self, *args, **kwargs):
            if self.training:
                time.sleep(pause)
            return forward(self, *args, **kwargs)
        helpers.CountingBCE.forward = slow
    from mlcnc.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _train_args(data: Path, out: Path, devices: int) -> list[str]:
    return [
        "train", "--config", "csv", "--output", str(out), "--resume", "auto",
        f"data.train_csv={data / 'train.csv'}", f"data.test_csv={data / 'test.csv'}",
        "data.image_size=24", "data.num_workers=0", "data.head_threshold=10",
        "data.tail_threshold=4", f"method.name={TINY_METHOD}", "method.pretrained=false",
        "method.model.norm=false", "method.model.dropout=0.0", "optim.epochs=3",
        "optim.batch_size=8", "optim.lr=0.01", "train.accelerator=cpu", "train.ema_decay=0.9",
        "train.progress=false", "train.plots=false", "train.eval_every=1",
        f"train.devices={devices}", "train.strategy=" + ("ddp" if devices > 1 else "auto"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The data, the CLI script and the 1-process reference run (outside SLURM)."""
    root = tmp_path_factory.mktemp("srun")
    data = write_tiny_csv_dataset(root / "data")
    # 24 training images (3 global batches of 8); 7 test images (the 2-rank evaluation pads one).
    for name, keep in (("train.csv", 25), ("test.csv", 8)):
        lines = (data / name).read_text().splitlines()
        (data / name).write_text("\n".join(lines[:keep]) + "\n")
    script = root / "mlcnc_cli.py"
    script.write_text(CLI.format(tests=str(TESTS)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run(
        [sys.executable, str(script), *_train_args(data, root / "one", 1)],
        cwd=root, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"root": root, "data": data, "script": script, "one": root / "one"}


def _srun(cluster: dict[str, str], setup: dict[str, Path], out: Path, **env: str):
    command = ["srun", "-N1", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=5",
               sys.executable, str(setup["script"]), *_train_args(setup["data"], out, 2)]  # fmt: skip
    return subprocess.run(
        command, cwd=setup["root"], env={**cluster, "OMP_NUM_THREADS": "1", **env},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(one: Path, two: Path) -> None:
    """test_ddp.py's criteria: losses, metrics, weights and the all-reduced buffer."""
    a_records, b_records = _records(one), _records(two)
    assert [r["epoch"] for r in a_records] == [r["epoch"] for r in b_records] == [1, 2, 3]
    for x, y in zip(a_records, b_records, strict=True):
        assert y["step"] == x["step"]
        assert y["loss/total"] == pytest.approx(x["loss/total"], rel=1e-5)
        for key, value in x.items():
            if "/map_" in key and value is not None:
                assert y[key] == pytest.approx(value, abs=1e-3), key
    a = torch.load(one / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(two / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5)
    assert torch.equal(a["criterion"]["seen_counts"], b["criterion"]["seen_counts"])
    assert a["criterion"]["seen_counts"].tolist() == [3 * 17, 3 * 8, 3 * 4, 3 * 2]


def test_two_srun_tasks_match_one_process(slurm_cluster, setup) -> None:
    out = setup["root"] / "two"
    done = _srun(slurm_cluster, setup, out)  # --resume auto on a new folder: a new run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1  # rank 0 reports, once
    _assert_same_run(setup["one"], out)
    # One run folder (nothing written elsewhere by rank 1), one set of records and checkpoints.
    made = sorted(p.name for p in setup["root"].iterdir() if p.name.startswith(("two", "runs")))
    assert made == ["two"]
    files = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert files == sorted(p.name for p in (setup["one"] / "checkpoints").iterdir())


def test_a_cancelled_job_resumes_with_resume_auto(slurm_cluster, setup) -> None:
    out = setup["root"] / "cancelled"
    command = ["srun", "-N1", "--ntasks-per-node=2", "--cpus-per-task=1", sys.executable,
               str(setup["script"]), *_train_args(setup["data"], out, 2)]  # fmt: skip
    batch = setup["root"] / "job.sh"
    batch.write_text("#!/bin/bash\nexport OMP_NUM_THREADS=1\n" + " ".join(command) + "\n")
    done = subprocess.run(
        ["sbatch", "--parsable", "-N1", "--ntasks-per-node=2", "--time=5",
         f"--output={setup['root'] / 'job-%j.out'}", str(batch)],
        cwd=setup["root"], env={**slurm_cluster, "MLCNC_TEST_STEP_SLEEP": "0.4"},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    job = done.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
        assert time.monotonic() < deadline, "the job wrote no epoch in 120 s"
        time.sleep(0.2)
    time.sleep(0.5)  # into epoch 2 (3 steps of 0.4 s)
    subprocess.run(["scancel", job], env=slurm_cluster, check=True, timeout=30)
    while subprocess.run(
        ["squeue", "-h", "-j", job], env=slurm_cluster, capture_output=True, text=True
    ).stdout.strip():
        assert time.monotonic() < deadline + 60, "the cancelled job did not end"
        time.sleep(0.2)
    assert [r["epoch"] for r in _records(out)] == [1]  # stopped in epoch 2
    done = _srun(slurm_cluster, setup, out)  # the same command: --resume auto continues
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _assert_same_run(setup["one"], out)
