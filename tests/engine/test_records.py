"""Run records: crash consistency, run-folder reuse and locking, resume checks, checkpoint
errors, trainability checks.

Crash consistency is checked at every kill point: a reference run is copied aside at each
boundary of the writes that make up its records (before the first checkpoint, after each
checkpoint write, after each metrics write); what a kill leaves on disk at that moment is
exactly that copy (a kill inside training leaves the state of the last boundary; a kill
inside a write leaves a temporary file, added to every copy). Each copy is resumed and must
end with the reference's metrics.jsonl, metrics.csv, config.yaml, last.ckpt and best.ckpt:
tensors bit for bit, records equal but for their timing fields. One real kill
(``os._exit`` in a subprocess, between last.ckpt and best.ckpt) checks the same with the
lock file the dead process leaves.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import mlcnc.engine.loop as loop
from helpers import tiny_config, write_tiny_csv_dataset
from mlcnc.config import ConfigError
from mlcnc.data import DataError
from mlcnc.engine import train
from mlcnc.engine.checkpoint import (
    CheckpointError,
    MissingCheckpointError,
    data_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from mlcnc.engine.run_folder import TIMING_KEYS, RunFolder, RunFolderError, RunLock
from mlcnc.io import temporary_name

pytestmark = pytest.mark.usefixtures("tiny_method")

TESTS = Path(__file__).resolve().parents[1]
FAST = ("train.plots=false", "train.num_threads=1")


def _config(data: Path, out: Path, *extra: str):
    return tiny_config(data, out, "train.eval_every=1", *FAST, *extra)


# --------------------------------------------------------------------------------------
# comparing two run folders


def _same(a: Any, b: Any, where: str = "") -> None:
    """Equal structures; tensors bit for bit; timing fields of records skipped."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict), where
        keys = set(a) - set(TIMING_KEYS)
        assert keys == set(b) - set(TIMING_KEYS), (where, keys ^ (set(b) - set(TIMING_KEYS)))
        for key in keys:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)  # NaN == NaN here


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _csv_rows(run: Path) -> tuple[list[str], list[dict]]:
    with open(run / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def assert_same_run(reference: Path, run: Path) -> None:
    """``run`` holds the records and checkpoints of ``reference`` (where it ran apart)."""
    import yaml

    configs = [yaml.safe_load((r / "config.yaml").read_text()) for r in (reference, run)]
    for config in configs:
        config["train"].pop("output")
    assert configs[0] == configs[1]
    _same(_records(reference), _records(run), "metrics.jsonl")
    header, rows = _csv_rows(reference)
    header_b, rows_b = _csv_rows(run)
    assert header == header_b
    _same(rows, rows_b, "metrics.csv")
    names = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == names
    for name in names:
        ref = torch.load(reference / "checkpoints" / name, weights_only=True)
        other = torch.load(run / "checkpoints" / name, weights_only=True)
        for state in (ref, other):
            state["config"]["train"].pop("output")
        _same(ref, other, name)
    assert _tensorboard_scalars(run) == _tensorboard_scalars(reference), "TensorBoard"
    assert not (run / ".lock").exists()


def _tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar as a reader shows it (events a resumed run purged hidden),
    as (step, value) per tag in step order (the reader's order follows the event files);
    timing tags left out. A step logged twice appears twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: sorted((e.step, e.value) for e in events.Scalars(tag))
        for tag in events.Tags()["scalars"]
        if not tag.endswith(TIMING_KEYS)
    }


# --------------------------------------------------------------------------------------
# every kill point


def _snapshot_run(data: Path, root: Path, *extra: str) -> tuple[Path, list[tuple[str, Path]]]:
    """The reference run, and a copy of its folder at every boundary of its record writes."""
    reference = root / "reference"
    snapshots: list[tuple[str, Path]] = []
    real_save, real_records = loop.save_checkpoint, RunFolder.write_records

    def snap(label: str) -> None:
        copy = root / f"kill{len(snapshots):02d}"
        shutil.copytree(reference, copy)
        # A kill inside a write leaves its temporary file behind.
        (copy / "checkpoints" / ".last.ckpt.999999-deadbeef.tmp").write_bytes(b"partial")
        snapshots.append((label, copy))

    def save(state, path):
        if not snapshots:
            snap(f"before the first write (epoch {state['epoch']})")
        done = real_save(state, path)
        snap(f"after {Path(path).name} of epoch {state['epoch']}")
        return done

    def records(self, history):
        if not snapshots:
            snap("before the first write")
        real_records(self, history)
        snap(f"after the metrics of epoch {history[-1]['epoch']}")

    loop.save_checkpoint, RunFolder.write_records = save, records
    try:
        train(_config(data, reference, *extra), config_name="tiny")
    finally:
        loop.save_checkpoint, RunFolder.write_records = real_save, real_records
    return reference, snapshots


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        # val split, regular model only (so the selection improves at epochs 1 and 2, not 3,
        # on this data: the EMA would win epoch 1 and never be beaten)
        ("train.ema_decay=0.0",),
        ("data.val_csv=null", "train.checkpoint_every=2"),  # epoch 1 has no checkpoint
    ],
    ids=["val-every-epoch", "no-val-checkpoint-every-2"],
)
def test_every_kill_point_resumes_to_the_uninterrupted_run(tmp_path: Path, extra) -> None:
    data = write_tiny_csv_dataset(tmp_path / "data")
    reference, snapshots = _snapshot_run(data, tmp_path, *extra)
    assert [r["epoch"] for r in _records(reference)] == [1, 2, 3]
    labels = [label for label, _ in snapshots]
    if "data.val_csv=null" not in extra:
        assert "after best.ckpt of epoch 2" in labels and "after last.ckpt of epoch 3" in labels
        assert "after best.ckpt of epoch 3" not in labels
    else:
        assert "after last.ckpt of epoch 1" not in labels
        assert "after the metrics of epoch 1" in labels
    for label, copy in snapshots:
        train(None, resume=copy)
        try:
            assert_same_run(reference, copy)
        except AssertionError as error:
            raise AssertionError(f"killed {label}: {error}") from error


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import helpers
    import mlcnc.engine.loop as loop
    from mlcnc.engine import train

    real = loop.save_checkpoint

    def save(state, path):
        real(state, path)
        if Path(path).name == "last.ckpt" and state["epoch"] == 2:
            os._exit(17)  # killed between last.ckpt and best.ckpt
        return path

    loop.save_checkpoint = save
    helpers.register_tiny_method()
    cfg = helpers.tiny_config(
        Path(sys.argv[1]), Path(sys.argv[2]), "train.eval_every=1", *{fast!r}, "train.ema_decay=0.0"
    )
    train(cfg, config_name="tiny")
    """
)


@pytest.mark.slow
def test_a_real_kill_between_the_checkpoints_is_repaired_by_resume(tmp_path: Path) -> None:
    data = write_tiny_csv_dataset(tmp_path / "data")
    reference = tmp_path / "reference"
    train(_config(data, reference, "train.ema_decay=0.0"), config_name="tiny")
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(tests=str(TESTS), fast=FAST))
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, str(script), str(data), str(killed)], env=env, stderr=subprocess.PIPE
    )
    _, err = process.communicate(timeout=300)
    assert process.returncode == 17, err.decode()[-2000:]
    # What the old code lost: the epoch-2 metrics line, and best.ckpt lags behind last.ckpt.
    assert [r["epoch"] for r in _records(killed)] == [1]
    last = load_checkpoint(killed / "checkpoints" / "last.ckpt")
    best = load_checkpoint(killed / "checkpoints" / "best.ckpt")
    assert last["best"]["epoch"] == 2 and best["epoch"] == 1
    assert json.loads((killed / ".lock").read_text())["pid"] == process.pid  # left behind
    train(None, resume=killed)
    assert_same_run(reference, killed)


# --------------------------------------------------------------------------------------
# one run per folder


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished 2-epoch run; its epoch-1 last.ckpt is kept aside as RUN.epoch1.ckpt."""
    root = tmp_path_factory.mktemp("records")
    data = write_tiny_csv_dataset(root / "data")
    run = root / "run"
    real = loop.save_checkpoint

    def keep(state, path):
        real(state, path)
        if Path(path).name == "last.ckpt" and state["epoch"] == 1:
            real(state, root / "run.epoch1.ckpt")
        return path

    loop.save_checkpoint = keep
    try:
        train(_config(data, run, "optim.epochs=2"), config_name="tiny")
    finally:
        loop.save_checkpoint = real
    return data, run


def _files(run: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and "tensorboard" not in p.parts
    }


def test_a_new_run_into_a_folder_holding_a_run_is_refused(finished, tmp_path) -> None:
    data, run = finished
    before = _files(run)
    with pytest.raises(RunFolderError, match=r"already holds a run .*--resume .*--overwrite"):
        train(_config(data, run, "optim.epochs=2", "train.seed=7"), config_name="tiny")
    assert _files(run) == before  # nothing touched
    # A refused run (bad data here) leaves no folder behind, so a retry is not a reuse.
    missing = tmp_path / "never"
    with pytest.raises(DataError):
        train(_config(data, missing, "data.train_csv=" + str(data / "nope.csv")))
    assert not missing.exists()


def test_overwrite_replaces_the_old_run(finished, tmp_path) -> None:
    data, run = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "notes.txt").write_text("mine")
    result = train(_config(data, copy, "optim.epochs=2", "train.seed=7"), overwrite=True)
    assert [r["epoch"] for r in _records(copy)] == [1, 2]  # only the new run's epochs
    _, rows = _csv_rows(copy)
    assert len(rows) == 2
    state = load_checkpoint(copy / "checkpoints" / "last.ckpt")
    assert state["config"]["train"]["seed"] == 7
    assert "seed: 7" in (copy / "config.yaml").read_text()
    assert (copy / "notes.txt").read_text() == "mine"  # not the run's: kept
    assert result.history == _records(copy)


def test_a_live_lock_keeps_a_second_process_out(finished, tmp_path) -> None:
    run = finished[1]
    other = RunLock(run / ".lock")
    other.acquire()  # as another process would: a second open file holding the flock
    try:
        with pytest.raises(
            RunFolderError, match=rf"in use by another mlcnc process \(pid {os.getpid()}"
        ):
            train(None, resume=run)
    finally:
        other.release()
    assert not (run / ".lock").exists()


def test_a_stale_lock_is_taken_over(finished, tmp_path, capsys) -> None:
    run = finished[1]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / ".lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere", "started": "x"}))
    train(None, resume=copy)
    assert "took over the lock left by pid 999999 on elsewhere" in capsys.readouterr().err
    assert not (copy / ".lock").exists()


def test_the_lock_without_flock_detects_live_and_dead_owners(tmp_path, monkeypatch) -> None:
    """On a file system without flock: exclusive creation, and a pid check for staleness."""
    import errno
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    path = tmp_path / ".lock"
    first = RunLock(path)
    first.acquire()
    with pytest.raises(RunFolderError, match=rf"pid {os.getpid()} .*delete .*\.lock"):
        RunLock(path).acquire()
    first.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    taken = RunLock(path)
    taken.acquire()
    assert taken.stale["pid"] == dead.pid
    assert json.loads(path.read_text())["pid"] == os.getpid()
    taken.release()
    assert not path.exists()


def test_temporary_names_are_unique_per_process_and_call(tmp_path) -> None:
    target = tmp_path / "last.ckpt"
    names = {temporary_name(target) for _ in range(50)}
    assert len(names) == 50
    assert all(f".last.ckpt.{os.getpid()}-" in n.name for n in names)


CONCURRENT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import helpers
    helpers.register_tiny_method()
    from mlcnc.cli import main
    sys.exit(main(["train", "--config", {config!r}, "--output", sys.argv[1], "--seed", sys.argv[2]]))
    """
)


@pytest.mark.slow
def test_two_runs_started_at_once_on_one_folder(tmp_path) -> None:
    """One trains; the other is refused in one line; config and checkpoint agree."""
    import yaml

    from mlcnc.config import config_to_dict

    data = write_tiny_csv_dataset(tmp_path / "data")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(_config(data, tmp_path / "x"))))
    script = tmp_path / "start.py"
    script.write_text(CONCURRENT.format(tests=str(TESTS), config=str(config)))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = [
        subprocess.Popen(
            [sys.executable, str(script), str(run), str(seed)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in started]
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 2], outcomes
    refused = next(err for code, err in outcomes if code == 2)
    lines = [line for line in refused.splitlines() if line.startswith("mlcnc train: error:")]
    assert len(lines) == 1 and ("in use by another" in lines[0] or "holds a run" in lines[0])
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["seed"] == state["config"]["train"]["seed"]
    assert [r["epoch"] for r in _records(run)] == [1, 2, 3]
    assert not list(run.rglob("*.tmp"))


# --------------------------------------------------------------------------------------
# where a resume continues


def test_resume_from_a_checkpoint_continues_in_its_own_run_folder(finished, tmp_path) -> None:
    run = finished[1]
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    result = train(None, resume=copy / "checkpoints" / "last.ckpt")
    assert result.run_dir == copy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # nothing else created


def test_a_loose_checkpoint_is_refused_unless_given_a_new_folder(finished, tmp_path) -> None:
    data, run = finished
    loose = tmp_path / "downloads" / "model.ckpt"
    loose.parent.mkdir()
    shutil.copyfile(run.with_name("run.epoch1.ckpt"), loose)  # the epoch-1 checkpoint
    with pytest.raises(RunFolderError, match=r"outside a run folder .* --output DIR"):
        train(None, resume=loose)
    assert sorted(p.name for p in loose.parent.iterdir()) == ["model.ckpt"]
    # With a new folder: the run continues there, its records rebuilt from the checkpoint.
    continued = tmp_path / "continued"
    result = train(_config(data, continued, "optim.epochs=2"), resume=loose)
    assert result.run_dir == continued
    assert [r["epoch"] for r in _records(continued)] == [1, 2]
    _same(_records(continued), _records(run))
    here, there = (load_checkpoint(r / "checkpoints" / "last.ckpt") for r in (continued, run))
    assert here.pop("config")["train"]["output"] == str(continued)  # its own folder
    there.pop("config")
    _same(here, there)
    assert sorted(p.name for p in loose.parent.iterdir()) == ["model.ckpt"]
    # A forced resume with more epochs extends the run (the schedule rebuilt at the saved step).
    longer = train(_config(data, tmp_path / "longer", "optim.epochs=3"), resume=loose, force=True)
    assert [r["epoch"] for r in longer.history] == [1, 2, 3]


def test_resume_and_overwrite_exclude_each_other(finished) -> None:
    with pytest.raises(RunFolderError, match="only one of them"):
        train(None, resume=finished[1], overwrite=True)


# --------------------------------------------------------------------------------------
# resume compares the data


def _relocated(finished, tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the finished run and of its dataset, the run's checkpoints pointing at the
    copied dataset (as after moving both): the tests change the copied data."""
    data, run = finished
    data_copy, run_copy = tmp_path / "data", tmp_path / "run"
    shutil.copytree(data, data_copy)
    shutil.copytree(run, run_copy)
    for name in ("last.ckpt", "best.ckpt"):
        state = load_checkpoint(run_copy / "checkpoints" / name)
        for key in ("train_csv", "val_csv", "test_csv"):
            state["config"]["data"][key] = str(data_copy / Path(state["config"]["data"][key]).name)
        save_checkpoint(state, run_copy / "checkpoints" / name)
    return data_copy, run_copy


def test_resume_refuses_reordered_classes_unless_forced(finished, tmp_path, capsys) -> None:
    data, run = _relocated(finished, tmp_path)
    train(None, resume=run)  # the same data, moved as a whole: accepted
    (data / "classes.txt").write_text("square\ncircle\ntriangle\nstar\n")
    with pytest.raises(DataError, match=r"class order .*relabels.*--force"):
        train(None, resume=run)
    train(None, resume=run, force=True)
    assert "--force: resuming" in capsys.readouterr().err


def test_resume_refuses_another_number_of_classes_even_forced(finished, tmp_path) -> None:
    data, run = _relocated(finished, tmp_path)
    (data / "classes.txt").write_text("circle\nsquare\ntriangle\nstar\nhexagon\n")
    for force in (False, True):
        with pytest.raises(DataError, match=r"number of classes: 4 in .*5 in .*added hexagon"):
            train(None, resume=run, force=force)


def test_resume_refuses_other_training_images_or_labels(finished, tmp_path) -> None:
    data, run = _relocated(finished, tmp_path)
    lines = (data / "train.csv").read_text().splitlines()
    lines[1] = lines[1].replace("circle", "square")  # one label changed
    (data / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"training images or their labels \(25 images"):
        train(None, resume=run)
    (data / "train.csv").write_text("\n".join(lines[:-1]) + "\n")  # one image fewer
    with pytest.raises(DataError, match=r"25 images then, 24 now"):
        train(None, resume=run)


def test_an_old_checkpoint_without_fingerprint_compares_class_names(
    finished, tmp_path, capsys
) -> None:
    _, run = _relocated(finished, tmp_path)
    for name in ("last.ckpt", "best.ckpt"):
        state = load_checkpoint(run / "checkpoints" / name)
        for key in ("format", "data", "history", "test_ap"):  # an older mlcnc's checkpoint
            del state[key]
        save_checkpoint(state, run / "checkpoints" / name)
    train(None, resume=run)
    err = capsys.readouterr().err
    assert "without a fingerprint of its training data: only the class names" in err
    assert "without an epoch history" in err
    assert [r["epoch"] for r in _records(run)] == [1, 2]


def test_fingerprint_ignores_order_and_folder_but_not_labels() -> None:
    import numpy as np

    names = ["a", "b"]
    labels = np.array([[1, 0], [0, 1]], dtype=np.uint8)
    one = data_fingerprint(["/d/x.png", "/d/y.png"], labels, names, "/d/train.csv")
    assert one == data_fingerprint(["/e/y.png", "/e/x.png"], labels[::-1], names, "/e/t.csv")
    assert one == data_fingerprint(["/d/x.png", "/d/y.png"], labels[:, ::-1], ["b", "a"], "/d/t")
    assert one != data_fingerprint(["/d/x.png", "/d/y.png"], labels[::-1], names, "/d/train.csv")


# --------------------------------------------------------------------------------------
# checkpoint files


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("not a checkpoint\n"), "not a PyTorch checkpoint file"),
        (
            lambda p: torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, p),
            "pickled Python objects",
        ),
        (lambda p: torch.save(torch.zeros(2), p), "holds a Tensor, not a dict"),
        (lambda p: torch.save({"state_dict": {}}, p), "lacks model, config"),
    ],
    ids=["missing", "empty", "text", "pickled", "tensor", "foreign"],
)
def test_load_checkpoint_names_the_file_and_the_problem(tmp_path, make, message) -> None:
    path = tmp_path / "x.ckpt"
    make(path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, DataError)


def test_a_truncated_checkpoint_is_named(finished, tmp_path) -> None:
    whole = (finished[1] / "checkpoints" / "last.ckpt").read_bytes()
    for cut in (100, len(whole) // 2, len(whole) - 10):
        path = tmp_path / f"cut{cut}.ckpt"
        path.write_bytes(whole[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_checkpoint(path)
    with pytest.raises(MissingCheckpointError):
        train(None, resume=tmp_path / "nowhere")


# --------------------------------------------------------------------------------------
# data a method cannot train on


def test_a_training_set_without_one_step_is_refused(tmp_path) -> None:
    data = write_tiny_csv_dataset(tmp_path / "data")
    lines = (data / "train.csv").read_text().splitlines()
    (data / "train.csv").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(DataError, match=r"train\.csv: 1 training image\(s\) make no training step"):
        train(_config(data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_single_class_is_refused_by_mlcnc(tmp_path) -> None:
    data = write_tiny_csv_dataset(tmp_path / "data")
    (data / "classes.txt").write_text("circle\n")
    for split in ("train", "val", "test"):
        rows = (data / f"{split}.csv").read_text().splitlines()
        rows = [rows[0]] + [f"{r.split(',')[0]},circle" for r in rows[1:]]
        (data / f"{split}.csv").write_text("\n".join(rows) + "\n")
    cfg = _config(data, tmp_path / "run", "method.name=mlcnc", "method.backbone=test_efficientnet")
    with pytest.raises(DataError, match=r"1 class \(circle\); method mlcnc needs at least 2"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_a_schedule_without_steps_is_a_config_error(tmp_path) -> None:
    data = write_tiny_csv_dataset(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"optim\.schedule=onecycle cannot be built"):
        train(_config(data, tmp_path / "run", "optim.epochs=1"))
