"""Keeps the "Runs, checkpoints and commands" section of docs/bad_input.md true: every row of
its table is a case run here with the real ``mlcnc`` command; the output must contain the
row's message, the exit code must be the row's, and an error must be one line on stderr
without a traceback. Cases also check what must not happen (files touched, written, lost).

Training uses the tiny method of tests/helpers.py: a second or
two per run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import mlcnc.engine.loop as loop
from cli_cases import Cases, Outcome, Runner, doc_rows, tiny_args
from helpers import TINY_METHOD, write_tiny_csv_dataset
from mlcnc.cli import main
from mlcnc.engine.checkpoint import load_checkpoint, save_checkpoint
from mlcnc.engine.run_folder import RunLock

# Every documented case runs the real command, most of them a tiny training: end to end.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_method")]

SECTION = "## Runs, checkpoints and commands"
CASES = Cases()
case = CASES.case


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished 2-epoch run of the tiny method, and its dataset."""
    root = tmp_path_factory.mktemp("bad_input_runs")
    data = write_tiny_csv_dataset(root / "data")
    run = root / "run"
    assert main(tiny_args(data, run)) == 0
    return data, run


def _copy_run(trained, tmp_path: Path, move_data: bool = False) -> tuple[Path, Path]:
    """Copies of the finished run (and, with ``move_data``, of its dataset, the copied
    checkpoint pointing at it, as after moving both): cases change the copies."""
    data, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    if move_data:
        data = tmp_path / "data"
        shutil.copytree(trained[0], data)
        for path in sorted((copy / "checkpoints").glob("*.ckpt")):  # last and best
            state = load_checkpoint(path)
            for key in ("train_csv", "val_csv", "test_csv"):
                state["config"]["data"][key] = str(data / Path(state["config"]["data"][key]).name)
            save_checkpoint(state, path)
    return data, copy


# --------------------------------------------------------------------------------------
# run folders


@case("run-folder-holds-a-run")
def _(tmp_path, run, trained):
    data, copy = _copy_run(trained, tmp_path)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    outcome = run(*tiny_args(data, copy, "--seed", "5"))
    assert f"--resume {copy}" in run.err and "--overwrite" in run.err
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    return outcome


@case("overwrite")
def _(tmp_path, run, trained):
    data, copy = _copy_run(trained, tmp_path)
    (copy / "notes.txt").write_text("mine")
    (copy / "checkpoints" / "notes.txt").write_text("mine too")  # the user's, in a run folder
    outcome = run(*tiny_args(data, copy, "--seed", "5", "--overwrite"))
    assert load_checkpoint(copy / "checkpoints" / "last.ckpt")["config"]["train"]["seed"] == 5
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 2  # the new run only
    assert (copy / "notes.txt").read_text() == "mine"
    assert (copy / "checkpoints" / "notes.txt").read_text() == "mine too"
    return outcome


@case("run-folder-in-use")
def _(tmp_path, run, trained):
    _, copy = _copy_run(trained, tmp_path)
    lock = RunLock(copy / ".lock")  # held as another process would hold it
    lock.acquire()
    try:
        return run("train", "--resume", copy)
    finally:
        lock.release()


@case("stale-lock")
def _(tmp_path, run, trained):
    _, copy = _copy_run(trained, tmp_path)
    (copy / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone", "started": "-"}))
    outcome = run("train", "--resume", copy)
    assert not (copy / ".lock").exists()
    return outcome


def _kill_at(data: Path, out: Path, when: Callable[[str, int], bool]) -> None:
    """Train until ``when(file name, epoch)`` is true after a checkpoint write, then stop
    as a kill would (the exception is not an Exception: nothing catches it)."""

    class Killed(BaseException):
        pass

    real = loop.save_checkpoint

    def save(state, path):
        real(state, path)
        if when(Path(path).name, state["epoch"]):
            raise Killed
        return path

    loop.save_checkpoint = save
    try:
        with pytest.raises(Killed):
            main(tiny_args(data, out))
    finally:
        loop.save_checkpoint = real


@case("killed-between-checkpoints")
def _(tmp_path, run, trained):
    data, reference = trained
    out = tmp_path / "run"
    _kill_at(data, out, lambda name, epoch: name == "last.ckpt" and epoch == 2)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # epoch 2's is missing
    outcome = run("train", "--resume", out)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    timing = ("img_per_s", "epoch_seconds", "eval_seconds")
    assert [{k: v for k, v in r.items() if k not in timing} for r in records] == [
        {k: v for k, v in r.items() if k not in timing} for r in expected
    ]
    best = load_checkpoint(out / "checkpoints" / "best.ckpt")
    assert best["epoch"] == load_checkpoint(out / "checkpoints" / "last.ckpt")["best"]["epoch"]
    return outcome


@case("killed-before-first-checkpoint")
def _(tmp_path, run, trained):
    data, _ = trained
    out = tmp_path / "run"
    _kill_at(data, out, lambda name, epoch: True)  # right after the first checkpoint ...
    (out / "checkpoints" / "last.ckpt").unlink()  # ... as if just before it
    (out / "checkpoints" / "best.ckpt").unlink(missing_ok=True)
    outcome = run("train", "--resume", out)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    return outcome


# --------------------------------------------------------------------------------------
# resume


@case("loose-checkpoint")
def _(tmp_path, run, trained):
    loose = tmp_path / "downloads" / "model.ckpt"
    loose.parent.mkdir()
    shutil.copyfile(trained[1] / "checkpoints" / "last.ckpt", loose)
    outcome = run("train", "--resume", loose)
    assert sorted(p.name for p in loose.parent.iterdir()) == ["model.ckpt"]  # nothing written
    return outcome


@case("resume-and-overwrite")
def _(tmp_path, run, trained):
    return run("train", "--resume", trained[1], "--overwrite")


@case("resume-no-run")
def _(tmp_path, run, trained):
    (tmp_path / "empty").mkdir()
    return run("train", "--resume", tmp_path / "empty")


@case("resume-reordered-classes")
def _(tmp_path, run, trained):
    data, copy = _copy_run(trained, tmp_path, move_data=True)
    assert run("train", "--resume", copy)[0] == "exit 0"  # moved as a whole: the same data
    (data / "classes.txt").write_text("star\ncircle\nsquare\ntriangle\n")
    outcome = run("train", "--resume", copy)
    assert "relabels the model's class columns" in run.err and "--force" in run.err
    assert run("train", "--resume", copy, "--force")[0] == "exit 0"
    assert "--force: resuming" in run.err and "the class order" in run.err
    return outcome


@case("resume-other-class-count")
def _(tmp_path, run, trained):
    data, copy = _copy_run(trained, tmp_path, move_data=True)
    (data / "classes.txt").write_text("circle\nsquare\ntriangle\nstar\nhexagon\n")
    assert run("train", "--resume", copy)[0] == "exit 1"
    return run("train", "--resume", copy, "--force")


@case("resume-changed-labels")
def _(tmp_path, run, trained):
    data, copy = _copy_run(trained, tmp_path, move_data=True)
    lines = (data / "train.csv").read_text().splitlines()
    lines[1] = lines[1].replace("circle", "square")
    (data / "train.csv").write_text("\n".join(lines) + "\n")
    return run("train", "--resume", copy)


@case("resume-old-checkpoint")
def _(tmp_path, run, trained):
    _, copy = _copy_run(trained, tmp_path)
    path = copy / "checkpoints" / "last.ckpt"
    state = load_checkpoint(path)
    for key in ("format", "data", "history", "test_ap"):  # what older checkpoints lack
        del state[key]
    save_checkpoint(state, path)
    outcome = run("train", "--resume", copy)
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 2
    return outcome


@case("resume-longer-schedule")
def _(tmp_path, run, trained):
    _, copy = _copy_run(trained, tmp_path)
    return run("train", "--resume", copy, "--force", "optim.epochs=3")


@case("checkpoint-from-another-run")
def _(tmp_path, run, trained):
    """The hostile-user probe's case: another run's checkpoint copied over best.ckpt."""
    _, copy = _copy_run(trained, tmp_path)
    best = copy / "checkpoints" / "best.ckpt"
    state = load_checkpoint(best)
    state["class_names"] = ["a", "b", *state["class_names"][2:]]  # another run's classes
    save_checkpoint(state, best)
    for command in ("predict", "export"):
        argv = [command, copy, "--checkpoint", "best"]
        argv += (
            ["--format", "weights", "--out", tmp_path / "w.pt"]
            if command == "export"
            else [trained[0] / "images" / "test_000.png", "--no-progress"]
        )
        result, text = run(*argv)
        assert result == "exit 1" and "does not belong to the run" in text, (command, text)
    return run("evaluate", copy, "--checkpoint", "best")


@case("resume-shorter-schedule")
def _(tmp_path, run, trained):
    """The hostile-user probe's case: fewer epochs than the run has trained."""
    _, copy = _copy_run(trained, tmp_path)
    before = _files(copy)
    outcome = run("train", "--resume", copy, "--force", "optim.epochs=1")
    assert _files(copy) == before  # config.yaml, metrics and checkpoints untouched
    return outcome


# --------------------------------------------------------------------------------------
# checkpoint files, in every command that reads one


def _commands_on_bad_checkpoint(
    tmp_path: Path, run, trained, make: Callable[[Path], None]
) -> tuple[Path, Path, list[Outcome]]:
    """``make(path)`` writes a bad checkpoint into a folder of its own; the outcomes of
    predict, export and inspect on it. Returns (folder, checkpoint, outcomes)."""
    folder = tmp_path / "bad"
    folder.mkdir()
    path = folder / "x.ckpt"
    make(path)
    image = trained[0] / "images" / "test_000.png"
    outcomes = [
        run("predict", path, image, "--no-progress"),
        run("export", path, "--format", "torchscript"),
        run("inspect", path),
    ]
    return folder, path, outcomes


def _checkpoint_case(tmp_path: Path, run, trained, make: Callable[[Path], None]) -> Outcome:
    """``make(path)`` writes a bad checkpoint; predict, export and inspect must all answer
    with the same one line, exit 1, and write nothing; evaluate too."""
    folder, path, outcomes = _commands_on_bad_checkpoint(tmp_path, run, trained, make)
    lines = [text.strip().replace(f"mlcnc {cmd}: ", "") for (_, text), cmd in
             zip(outcomes, ("predict", "export", "inspect"), strict=True)]  # fmt: skip
    assert len(set(lines)) == 1, lines
    assert {result for result, _ in outcomes} == {"exit 1"}
    result, text = run("evaluate", path)
    assert result == "exit 1" and len(text.strip().splitlines()) == 1, text
    assert all(p.name == "x.ckpt" for p in folder.iterdir())  # nothing written
    return outcomes[0]


@case("missing-checkpoint")
def _(tmp_path, run, trained):
    return _checkpoint_case(tmp_path, run, trained, lambda path: None)


@case("truncated-checkpoint")
def _(tmp_path, run, trained):
    whole = (trained[1] / "checkpoints" / "last.ckpt").read_bytes()
    return _checkpoint_case(
        tmp_path, run, trained, lambda p: p.write_bytes(whole[: len(whole) // 2])
    )


@case("not-a-checkpoint")
def _(tmp_path, run, trained):
    return _checkpoint_case(tmp_path, run, trained, lambda path: path.write_text("hello\n"))


@case("pickled-checkpoint")
def _(tmp_path, run, trained):
    def make(path):
        torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, path)

    return _checkpoint_case(tmp_path, run, trained, make)


@case("checkpoint-class-count")
def _(tmp_path, run, trained):
    def make(path):
        state = load_checkpoint(trained[1] / "checkpoints" / "last.ckpt")
        state["class_names"], state["class_freq"] = (
            state["class_names"][:3],
            state["class_freq"][:3],
        )
        save_checkpoint(state, path)

    folder, _, outcomes = _commands_on_bad_checkpoint(tmp_path, run, trained, make)
    assert {result for result, _ in outcomes} == {"exit 1"}
    assert all("weights do not fit" in text for _, text in outcomes)
    assert all(p.name == "x.ckpt" for p in folder.iterdir())
    return outcomes[0]


# --------------------------------------------------------------------------------------
# data a run cannot train on, commands


@case("too-few-training-images")
def _(tmp_path, run, trained):
    data = write_tiny_csv_dataset(tmp_path / "data")
    lines = (data / "train.csv").read_text().splitlines()
    (data / "train.csv").write_text("\n".join(lines[:2]) + "\n")
    outcome = run(*tiny_args(data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # a refused run leaves no folder
    return outcome


@case("single-class-mlcnc")
def _(tmp_path, run, trained):
    data = write_tiny_csv_dataset(tmp_path / "data")
    (data / "classes.txt").write_text("circle\n")
    for split in ("train", "val", "test"):
        rows = (data / f"{split}.csv").read_text().splitlines()
        rows = [rows[0]] + [f"{r.split(',')[0]},circle" for r in rows[1:]]
        (data / f"{split}.csv").write_text("\n".join(rows) + "\n")
    args = tiny_args(
        data, tmp_path / "run", "method.name=mlcnc", "method.backbone=test_efficientnet"
    )
    outcome = run(*args)
    assert "method.name=erm" in run.err
    return outcome


@case("schedule-without-steps")
def _(tmp_path, run, trained):
    return run(*tiny_args(trained[0], tmp_path / "run", "optim.epochs=1"))


@case("predict-nothing-readable")
def _(tmp_path, run, trained):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    out = tmp_path / "predictions.json"
    assert run("predict", trained[1], bad, "--no-progress", "--output", out)[0] == "exit 1"
    assert not out.exists()
    outcome = run("predict", trained[1], bad, "--no-progress")
    assert run.out == ""  # no "[]" that could pass for an empty result
    assert "x.png" in run.err
    return outcome


@case("benchmark-bad-data")
def _(tmp_path, run, trained):
    data = write_tiny_csv_dataset(tmp_path / "data")
    header = (data / "train.csv").read_text().replace("image,labels", "path,labels", 1)
    (data / "train.csv").write_text(header)
    overrides = [a for a in tiny_args(data, tmp_path)[5:] if not a.startswith("method.")]
    return run(
        "benchmark", "--data", "csv", "--methods", "erm", "--seeds", "0",
        "--output", tmp_path / "bench", "--no-plot", *overrides,
        "method.backbone=test_efficientnet", "method.pretrained=false",
    )  # fmt: skip


def _spoil(image: Path) -> None:
    image.write_bytes(image.read_bytes()[:40])  # a PNG cut short: the file is there


@case("train-bad-image")
def _(tmp_path, run, trained):
    data = write_tiny_csv_dataset(tmp_path / "data")
    _spoil(data / "images" / "train_003.png")
    return run(*tiny_args(data, tmp_path / "run"))


@case("evaluate-bad-image")
def _(tmp_path, run, trained):
    data, copy = _copy_run(trained, tmp_path, move_data=True)
    _spoil(data / "images" / "test_002.png")
    return run("evaluate", copy)


@case("inspect-bad-image")
def _(tmp_path, run, trained):
    data, copy = _copy_run(trained, tmp_path, move_data=True)
    _spoil(data / "images" / "test_002.png")
    return run("inspect", copy, "--out", tmp_path / "report")


# --------------------------------------------------------------------------------------
# issue 21: outputs never replace inputs or a run's files; nothing lost; one line


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@case("output-is-a-run-file")
def _(tmp_path, run, trained):
    _, copy = _copy_run(trained, tmp_path)
    image = trained[0] / "images" / "test_000.png"
    before = _files(copy)
    best = copy / "checkpoints" / "best.ckpt"
    link = tmp_path / "innocent.pt"
    link.symlink_to(best)
    for argv in (
        ("predict", copy, image, "--no-progress", "--output", copy / "checkpoints" / "last.ckpt"),
        ("predict", copy, image, "--no-progress", "--output", copy / "config.yaml"),
        ("evaluate", copy, "--json", copy / "metrics.jsonl"),
        ("export", copy, "--format", "torchscript", "--out", link),
        ("inspect", copy, "--out", copy / "checkpoints"),
    ):
        result, text = run(*argv)
        assert result == "exit 1" and "nothing was written" in text, (argv, text)
    assert _files(copy) == before
    return run("export", copy, "--format", "torchscript", "--out", best)


@case("output-is-an-input")
def _(tmp_path, run, trained):
    image = tmp_path / "x.png"
    shutil.copyfile(trained[0] / "images" / "test_000.png", image)
    before = image.read_bytes()
    outcome = run("predict", trained[1], image, "--no-progress", "--output", image)
    assert image.read_bytes() == before
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copyfile(image, folder / "y.png")
    result, text = run("predict", trained[1], folder, "--no-progress", "--output", folder / "y.png")
    assert result == "exit 1" and (folder / "y.png").read_bytes() == before, text
    test_csv = trained[0] / "test.csv"
    rows = test_csv.read_bytes()
    result, text = run("evaluate", trained[1], "--json", test_csv)  # the run's own test split
    assert result == "exit 1" and "input of the command" in text and test_csv.read_bytes() == rows
    return outcome


@case("output-exists")
def _(tmp_path, run, trained):
    """The hostile-user probe's cases: export over the run's training CSV or a test image,
    data stats --json over a split; an export whose suffix is another format's."""
    train_csv, image = trained[0] / "train.csv", trained[0] / "images" / "test_000.png"
    kept = {path: path.read_bytes() for path in (train_csv, image)}
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"mine")
    for argv in (
        ("export", trained[1], "--format", "onnx", "--out", train_csv),
        ("export", trained[1], "--format", "torchscript", "--out", image),
        ("export", trained[1], "--format", "torchscript", "--out", mine),
        ("data", "stats", "--csv", trained[0] / "test.csv", "--json", trained[0] / "val.csv"),
        ("predict", trained[1], image, "--no-progress", "--output", mine),
    ):
        result, text = run(*argv)
        assert result == "exit 1" and ("nothing was written" in text or "--overwrite" in text), (
            argv,
            text,
        )
    assert all(path.read_bytes() == data for path, data in kept.items())
    assert mine.read_bytes() == b"mine"
    result, text = run("export", trained[1], "--format", "onnx", "--out", tmp_path / "m.pt")
    assert result == "exit 2" and "a onnx export is a .onnx file" in text, text
    return run("export", trained[1], "--format", "torchscript", "--out", mine)


@case("output-is-a-folder-or-file")
def _(tmp_path, run, trained):
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("mine")
    result, text = run("evaluate", trained[1], "--json", tmp_path / "a-folder")
    assert result == "exit 1" and "an existing folder" in text, text
    result, text = run(*tiny_args(trained[0], tmp_path / "a-file"))
    assert result == "exit 1" and "an existing file" in text, text
    assert (tmp_path / "a-file").read_text() == "mine"
    return run(
        "predict", trained[1], trained[0] / "images" / "test_000.png", "--no-progress",
        "--output", tmp_path / "a-file" / "p.json",
    )  # fmt: skip


@case("output-disk-full")
def _(tmp_path, run, trained):
    import errno
    import os

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "result.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", full)
        outcome = run("evaluate", trained[1], "--json", out)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    assert str(out) in run.err
    return outcome


@case("resume-without-last-checkpoint")
def _(tmp_path, run, trained):
    _, copy = _copy_run(trained, tmp_path)
    (copy / "checkpoints" / "last.ckpt").unlink()
    best = (copy / "checkpoints" / "best.ckpt").read_bytes()
    outcome = run("train", "--resume", copy)
    assert (copy / "checkpoints" / "best.ckpt").read_bytes() == best  # kept
    assert f"--resume {copy / 'checkpoints' / 'best.ckpt'}" in run.err
    return outcome


@case("overwrite-folder-without-run")
def _(tmp_path, run, trained):
    out = tmp_path / "mine"
    for name in ("plots", "tensorboard", "inspect-test"):
        (out / name).mkdir(parents=True)
        (out / name / "keep.txt").write_text(name)
    outcome = run(*tiny_args(trained[0], out, "--overwrite"))
    for name in ("plots", "tensorboard", "inspect-test"):
        assert (out / name / "keep.txt").read_text() == name
    assert "removed the previous run" not in run.err
    return outcome


@case("overwrite-user-files-named-like-a-run")
def _(tmp_path, run, trained):
    """The hostile-user probe's case: the user's own config.yaml, metrics.csv and a file in
    checkpoints/, in a folder that never held a run."""
    out = tmp_path / "userdir"
    (out / "checkpoints").mkdir(parents=True)
    files = {"config.yaml": "mine\n", "metrics.csv": "keep\n", "checkpoints/notes.txt": "x"}
    for name, text in files.items():
        (out / name).write_text(text)
    outcome = run(*tiny_args(trained[0], out, "--overwrite"))
    assert all((out / name).read_text() == text for name, text in files.items())
    return outcome


@case("benchmark-twice-into-one-output")
def _(tmp_path, run, trained):
    import threading

    import mlcnc.benchmark as benchmark

    output = tmp_path / "bench"
    run_dir = output / "runs" / f"{TINY_METHOD}-seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("{}\n")  # a live run, no checkpoint yet
    claim = benchmark.run_claim(run_dir)  # held as the first benchmark process holds it
    claim.acquire()
    seen = {}

    def first_process_finishes():
        seen["still there"] = (run_dir / "config.yaml").is_file()  # not renamed aside
        claim.release()

    timer = threading.Timer(4.0, first_process_finishes)
    timer.start()
    overrides = [a for a in tiny_args(trained[0], tmp_path)[5:] if not a.startswith("method.")]
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(benchmark, "RUN_CLAIM_POLL_SECONDS", 0.2)
            outcome = run(
                "benchmark", "--config", "csv", "--methods", TINY_METHOD, "--seeds", "0,1",
                "--output", output, "--no-plot", *overrides, "method.pretrained=false",
            )  # fmt: skip
    finally:
        timer.cancel()
        claim.release()
    assert outcome[0] == "exit 0", outcome[1]
    assert seen == {"still there": True}, outcome[1]
    assert (output / "runs" / f"{TINY_METHOD}-seed1" / "result.json").is_file()
    assert (run_dir / "result.json").is_file()  # trained once the other process let go
    return outcome


@case("resume-changed-test-split")
def _(tmp_path, run, trained):
    data, copy = _copy_run(trained, tmp_path, move_data=True)
    for split in ("test", "val"):
        lines = (data / f"{split}.csv").read_text().splitlines()
        (data / f"{split}.csv").write_text("\n".join(lines[:-1]) + "\n")
    outcome = run("train", "--resume", copy)
    assert "the val split's images or labels" in run.err
    return outcome


@case("resume-num-workers")
def _(tmp_path, run, trained):
    _, copy = _copy_run(trained, tmp_path)
    return run("train", "--resume", copy, "data.num_workers=1")


@case("resume-broken-classes-link")
def _(tmp_path, run, trained):
    data, copy = _copy_run(trained, tmp_path, move_data=True)
    (data / "classes.txt").unlink()
    (data / "classes.txt").symlink_to(tmp_path / "gone.txt")
    return run("train", "--resume", copy)


@case("resume-edited-config")
def _(tmp_path, run, trained):
    _, copy = _copy_run(trained, tmp_path)
    text = (copy / "config.yaml").read_text()
    edited = text.replace("  epochs: 2\n", "  epochs: 7\n")
    assert edited != text
    (copy / "config.yaml").write_text(edited)
    outcome = run("train", "--resume", copy)
    assert (copy / "config.yaml.edited").read_text() == edited
    return outcome


@case("run-config-not-yaml")
def _(tmp_path, run, trained):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("optim: [unclosed\n")
    return run("train", "--resume", folder)


@case("resume-force-other-optimizer")
def _(tmp_path, run, trained):
    _, copy = _copy_run(trained, tmp_path)
    return run("train", "--resume", copy, "--force", "optim.optimizer=sgd")


@case("batch-of-one-with-batchnorm")
def _(tmp_path, run, trained):
    return run(
        *tiny_args(trained[0], tmp_path / "run", "optim.batch_size=1", "method.name=erm",
                   "method.backbone=test_efficientnet")
    )  # fmt: skip


@case("missing-test-csv")
def _(tmp_path, run, trained):
    outcome = run(*tiny_args(trained[0], tmp_path / "run", "data.test_csv=null", "--dry-run"))
    assert "config OK" not in outcome[1]
    assert run(*tiny_args(trained[0], tmp_path / "run", "data.test_csv=null"))[0] == "exit 2"
    return outcome


BAD_VALUES = {
    "--seed=-1": "bad value -1 for 'train.seed'",
    "data.image_size=1": "bad value 1 for 'data.image_size'",
    "train.devices=abc": "train.devices=abc",
    "train.strategy=bogus": "train.strategy=bogus",
    "optim.lr=.inf": "bad value inf for 'optim.lr'; expected a finite number",
    "optim.eps=.inf": "bad value inf for 'optim.eps'; expected a finite number",
    "optim.lr=nan": "for 'optim.lr'; expected a finite number",
    "train.ema_decay=.nan": "for 'train.ema_decay'; expected a finite number",
}


@case("bad-config-values")
def _(tmp_path, run, trained):
    for value, message in BAD_VALUES.items():
        result, text = run(*tiny_args(trained[0], tmp_path / "run", value))
        assert result == "exit 2" and message in text, (value, text)
        assert len(run.err.strip().splitlines()) == 1, run.err
        assert not (tmp_path / "run").exists(), value
    return run(*tiny_args(trained[0], tmp_path / "run", "optim.lr=.inf"))


@case("cuda-without-gpu")
def _(tmp_path, run, trained):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    return run(*tiny_args(trained[0], tmp_path / "run", "train.accelerator=cuda"))


@case("predict-threshold-nan")
def _(tmp_path, run, trained):
    image = trained[0] / "images" / "test_000.png"
    for value in ("nan", "inf", "1.5"):
        assert run("predict", trained[1], image, "--threshold", value)[0] == "exit 2"
        assert run("evaluate", trained[1], "--threshold", value)[0] == "exit 2"
    return run("predict", trained[1], image, "--threshold", "nan")


@case("duplicate-yaml-key")
def _(tmp_path, run, trained):
    config = tmp_path / "dup.yaml"
    config.write_text("base: csv\noptim:\n  lr: 0.1\n  epochs: 9\noptim:\n  lr: 0.2\n")
    result, text = run("train", "--config", config, "--dry-run")
    assert result == "exit 2" and "line 5: duplicate key 'optim'" in text, text
    nested = tmp_path / "nested.yaml"
    nested.write_text("base: csv\noptim:\n  lr: 0.1\n  lr: 0.2\n")
    assert "line 4: duplicate key 'lr'" in run("train", "--config", nested, "--dry-run")[1]
    return run("train", "--config", config, "--dry-run")


@case("yaml-alias-bomb")
def _(tmp_path, run, trained):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    config = tmp_path / "lol.yaml"
    config.write_text("\n".join(lines) + "\n")
    import time

    started = time.perf_counter()
    outcome = run("train", "--config", config, "--dry-run")
    assert time.perf_counter() - started < 5 and len(outcome[1]) < 600, outcome[1][:600]
    return outcome


@case("pretrained-offline")
def _(tmp_path, run, trained):
    import urllib.error

    import torchvision.models._api as weights_api

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(weights_api, "load_state_dict_from_url", offline)
        outcome = run(*tiny_args(trained[0], tmp_path / "run", "method.name=erm",
                                 "method.backbone=resnet18", "method.pretrained=true"))  # fmt: skip
    assert "resnet18-f37072fd.pth" in run.err and "method.pretrained=false" in run.err
    return outcome


@case("pretrained-offline-timm")
def _(tmp_path, run, trained):
    """A real process (the hub's loggers write to the stderr they found at import) with an
    empty Hugging Face cache and an endpoint that refuses every connection."""
    import os
    import subprocess
    import time

    argv = tiny_args(trained[0], tmp_path / "run", "method.name=erm",
                     "method.backbone=convnext_atto", "method.pretrained=true")  # fmt: skip
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("HF_HUB_OFFLINE", None)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from mlcnc.cli import main; sys.exit(main())", *argv],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert time.perf_counter() - started < 120, "the hub's retries were not skipped"
    # Lightning's note where a SLURM installation is found (this machine's) is not ours.
    err = "".join(
        line for line in done.stderr.splitlines(keepends=True) if "`srun` command" not in line
    )
    assert "Retrying" not in err and "thrown while" not in err, err
    assert "hf download timm/convnext_atto.d2_in1k" in err, err
    outcome = Outcome((f"exit {done.returncode}", done.stdout + err))
    outcome.out, outcome.err = done.stdout, err
    return outcome


@case("predict-symlink-loop")
def _(tmp_path, run, trained):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copyfile(trained[0] / "images" / "test_000.png", folder / "a.png")
    (folder / "loop").symlink_to(folder)  # a folder that holds itself
    (folder / "self").symlink_to(folder / "self")  # a link to itself
    return run("predict", trained[1], folder, "--no-progress")


@case("malformed-checkpoint")
def _(tmp_path, run, trained):
    def make(path):
        state = load_checkpoint(trained[1] / "checkpoints" / "last.ckpt")
        state["epoch"] = "two"
        state["model"] = {"weight": torch.zeros(2)}
        save_checkpoint(state, path)

    folder, _, outcomes = _commands_on_bad_checkpoint(tmp_path, run, trained, make)
    assert {result for result, _ in outcomes} == {"exit 1"}, outcomes
    assert all(p.name == "x.ckpt" for p in folder.iterdir())
    return outcomes[0]


MEMORY_LIMIT = 6 * 1024**3
"""Address space for the memory-bound cases: enough for torch, far from 37 x 37,000,000."""


def _limited(argv: list[str], cwd: Path) -> tuple[int, str]:
    """The real command in a subprocess under ``RLIMIT_AS``; (exit code, its output)."""
    import subprocess

    code = (
        "import resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT})); "
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
        "import helpers; helpers.register_tiny_method(); "
        "from mlcnc.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    return done.returncode, done.stdout


@case("thin-image-memory")
def _(tmp_path, run, trained):
    from PIL import Image

    data = write_tiny_csv_dataset(tmp_path / "data")
    thin = data / "images" / "thin.png"
    Image.new("L", (1_000_000, 1)).save(thin)
    lines = (data / "train.csv").read_text().splitlines()
    lines[3] = "images/thin.png," + lines[3].split(",", 1)[1]
    (data / "train.csv").write_text("\n".join(lines) + "\n")
    (data / "test.csv").write_text("image,labels\nimages/thin.png,circle\n" +
                                   "".join(f"{x}\n" for x in (data / "val.csv").read_text().splitlines()[1:]))  # fmt: skip
    commands = [
        ["predict", str(trained[1]), str(thin), "--no-progress"],
        [*tiny_args(data, tmp_path / "run", "data.check_images=false")],
        [*tiny_args(data, tmp_path / "run2")],
        ["data", "check", "--csv", str(data / "train.csv"), "--decode"],
    ]
    for argv in commands:
        code, err = _limited(argv, tmp_path)
        assert code == 1 and "thin.png" in err and "Traceback" not in err, (argv, err[-2000:])
        assert "aspect ratio above 100:1" in err, err[-2000:]
    return run("predict", trained[1], thin, "--no-progress")


# ------------------------------------------------------------------------- probe cases


@case("inspect-out-holds-files")
def _(tmp_path, run, trained):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "report.md").write_text("my notes\n")
    outcome = run("inspect", trained[1], "--out", folder)
    assert (folder / "report.md").read_text() == "my notes\n"  # nothing replaced
    assert sorted(p.name for p in folder.iterdir()) == ["report.md"]
    return outcome


@case("non-finite-weights")
def _(tmp_path, run, trained):
    _, copy = _copy_run(trained, tmp_path)
    for path in sorted((copy / "checkpoints").glob("*.ckpt")):
        state = load_checkpoint(path)
        name = next(iter(state["model"]))
        state["model"][name] = state["model"][name] * float("nan")
        save_checkpoint(state, path)
    image = trained[0] / "images" / "test_000.png"
    for argv in (["predict", copy, image], ["export", copy, "--format", "weights"]):
        assert run(*argv)[0] == "exit 1" and "NaN or infinite" in run.err, run.err
    assert not list((copy / "checkpoints").glob("*.weights.pt"))
    return run("evaluate", copy, "--no-ema")


@case("benchmark-data-changed")
def _(tmp_path, run, trained):
    data = tmp_path / "data"
    shutil.copytree(trained[0], data)
    overrides = [a for a in tiny_args(data, tmp_path)[5:] if not a.startswith("method.")]
    argv = ["benchmark", "--config", "csv", "--methods", TINY_METHOD, "--seeds", "0",
            "--output", tmp_path / "bench", "--no-plot", *overrides, "method.pretrained=false"]  # fmt: skip
    assert run(*argv)[0] == "exit 0", run.err
    lines = (data / "test.csv").read_text().splitlines()
    relabelled = [lines[0], *(f"{line.split(',')[0]},circle" for line in lines[1:])]
    (data / "test.csv").write_text("\n".join(relabelled) + "\n")
    before = (tmp_path / "bench" / "results.md").read_text()
    outcome = run(*argv)
    assert (tmp_path / "bench" / "results.md").read_text() == before
    return outcome


@case("integer-option-range")
def _(tmp_path, run, trained):
    image = trained[0] / "images" / "test_000.png"
    for argv, option in [
        (["inspect", trained[1], "--batch-size", "-4"], "--batch-size"),
        (["predict", trained[1], image, "--workers", "-1"], "--workers"),
        (["predict", trained[1], image, "--top-k", "0"], "--top-k"),
        (["export", trained[1], "--format", "weights", "--check-count", "0"], "--check-count"),
        (["benchmark", "--methods", "erm", "--jobs", "0"], "--jobs"),
    ]:
        outcome = run(*argv)
        assert outcome[0] == "exit 2" and f"argument {option}: expected a whole number" in run.err
    return run("evaluate", trained[1], "--batch-size", "0")


@case("device-not-on-this-machine")
def _(tmp_path, run, trained):
    image = trained[0] / "images" / "test_000.png"
    if not torch.cuda.is_available():
        for argv in (["evaluate", trained[1]], ["predict", trained[1], image],
                     ["inspect", trained[1]]):  # fmt: skip
            assert run(*argv, "--device", "cuda")[0] == "exit 2", run.err
            assert "argument --device: 'cuda': PyTorch sees no CUDA GPU" in run.err, run.err
    return run("evaluate", trained[1], "--device", "tpu")


@case("two-outputs-one-path")
def _(tmp_path, run, trained):
    same = tmp_path / "same.out"
    outcome = run("evaluate", trained[1], "--json", same, "--predictions", same)
    assert not same.exists()
    return outcome


@case("overwrite-keeps-exports")
def _(tmp_path, run, trained):
    data, copy = _copy_run(trained, tmp_path)
    (copy / "checkpoints" / "best.onnx").write_bytes(b"an export")
    outcome = run(*tiny_args(data, copy, "--overwrite"))
    assert (copy / "checkpoints" / "best.onnx").read_bytes() == b"an export"
    return outcome


@case("export-again")
def _(tmp_path, run, trained):
    _, copy = _copy_run(trained, tmp_path)
    assert run("export", copy, "--format", "weights")[0] == "exit 0", run.err
    again = run("export", copy, "--format", "weights")
    assert run("export", copy, "--format", "weights", "--overwrite")[0] == "exit 0", run.err
    best = copy / "checkpoints" / "best.ckpt"
    argv = ("export", copy, "--format", "weights", "--out", best, "--overwrite")
    assert run(*argv)[0] == "exit 1" and "the run's checkpoints" in run.err  # never a .ckpt
    return again


@case("evaluate-non-data-override")
def _(tmp_path, run, trained):
    return run("evaluate", trained[1], "optim.lr=1")


@case("predict-arguments-swapped")
def _(tmp_path, run, trained):
    return run("predict", trained[0] / "images" / "test_000.png", trained[1], "--no-progress")


@case("predict-pixel-limit")
def _(tmp_path, run, trained):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("L", (4000, 3000)).save(big)
    assert (
        run("predict", trained[1], big, "--no-progress", "--max-image-pixels", "20000000")[0]
        == "exit 0"
    )
    return run("predict", trained[1], big, "--no-progress", "--max-image-pixels", "1000000")


@case("train-interrupted")
def _(tmp_path, run, trained):
    """Ctrl-C in a real process: one line, exit 130, and --resume continues the run."""
    import os
    import signal
    import subprocess
    import time

    folder = tmp_path / "run"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
        "import helpers; helpers.register_tiny_method(); "
        "from mlcnc.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = tiny_args(trained[0], folder, "optim.epochs=400")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", code, *argv], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    metrics = folder / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert not (folder / ".lock").exists() or RunLock(folder / ".lock").acquire() is None
    resumed = subprocess.run([sys.executable, "-c", code, "train", "--resume", str(folder),
                              "--force", "optim.epochs=4"], env=env, text=True,
                             capture_output=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs[-1] == 4 and len(set(epochs)) == len(epochs), epochs
    outcome = Outcome((f"exit {process.returncode}", out + err))
    outcome.out, outcome.err = out, err
    return outcome


@case("train-out-of-memory")
def _(tmp_path, run, trained):
    code, text = _limited(
        [*tiny_args(trained[0], tmp_path / "run", "data.image_size=12000")], tmp_path
    )
    outcome = Outcome((f"exit {code}", text))
    outcome.out, outcome.err = "", text
    return outcome


@case("python-m-mlcnc")
def _(tmp_path, run, trained):
    import subprocess

    done = subprocess.run([sys.executable, "-m", "mlcnc", "--help"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert subprocess.run([sys.executable, "-m", "mlcnc.cli", "--help"], capture_output=True,
                          timeout=120).returncode == 0  # fmt: skip
    outcome = Outcome((f"exit {done.returncode}", done.stdout + done.stderr))
    outcome.out, outcome.err = done.stdout, done.stderr
    return outcome


@case("overwrite-keeps-user-checkpoint")
def _(tmp_path, run, trained):
    data, copy = _copy_run(trained, tmp_path)
    mine = copy / "checkpoints" / "keep-epoch1.ckpt"  # the user's copy: not a name a run writes
    shutil.copy(copy / "checkpoints" / "best.ckpt", mine)
    before = mine.read_bytes()
    outcome = run(*tiny_args(data, copy, "--seed", "5", "--overwrite"))
    assert mine.read_bytes() == before
    assert "checkpoints/ (best.ckpt, last.ckpt)" in run.err
    return outcome


@case("export-over-other-run-checkpoint")
def _(tmp_path, run, trained):
    _, other = _copy_run(trained, tmp_path)
    best = other / "checkpoints" / "best.ckpt"
    loose = tmp_path / "loose.ckpt"
    shutil.copy(best, loose)
    before = best.read_bytes()
    argv = ("export", trained[1], "--format", "weights", "--out")
    assert run(*argv, loose, "--overwrite")[0] == "exit 1"
    assert "an mlcnc training checkpoint" in run.err
    assert run(*argv, best)[0] == "exit 1"  # without --overwrite: says what the file is
    outcome = run(*argv, best, "--overwrite")
    assert best.read_bytes() == before and loose.read_bytes() == before
    return outcome


@case("predict-interrupted-output")
def _(tmp_path, run, trained):
    from unittest import mock

    from mlcnc.analysis.predict import PredictionWriter

    old = tmp_path / "old.json"
    old.write_text('{"old": 1}')
    with mock.patch.object(PredictionWriter, "write", side_effect=KeyboardInterrupt):
        outcome = run("predict", trained[1], trained[0] / "images", "--output", old,
                      "--overwrite", "--no-progress")  # fmt: skip
    assert old.read_text() == '{"old": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]  # no temporary file
    assert run("predict", trained[1], trained[0] / "images", "--output", old, "--overwrite",
               "--no-progress")[0] == "exit 0"  # fmt: skip
    assert isinstance(json.loads(old.read_text()), list)
    return outcome


@case("dry-run-run-folder")
def _(tmp_path, run, trained):
    data, copy = _copy_run(trained, tmp_path)
    assert run(*tiny_args(data, copy, "--overwrite", "--dry-run"))[0] == "exit 0"
    return run(*tiny_args(data, copy, "--dry-run"))


@case("dry-run-missing-weights")
def _(tmp_path, run, trained):
    return run(*tiny_args(trained[0], tmp_path / "new", "--dry-run",
                          f"method.pretrained={tmp_path / 'none.pth'}"))  # fmt: skip


@case("missing-positional")
def _(tmp_path, run, trained):
    for command in ("inspect", "predict", "export"):
        assert run(command)[0] == "exit 2", run.err
        assert "KEY=VALUE" not in run.err.strip().splitlines()[-1], run.err  # the error line
    return run("evaluate")


# ------------------------------------------------------------------------- tests

ROWS = doc_rows(SECTION)


def test_every_documented_case_has_a_test_and_back() -> None:
    assert len(ROWS) >= 20
    assert sorted(ROWS) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_documented_answer(name, tmp_path, capsys, trained) -> None:
    message, expected = ROWS[name]
    outcome = CASES[name](tmp_path, Runner(capsys), trained)
    result, text = outcome
    assert result == expected, text
    assert message in text, text
    assert "Traceback" not in text
    if result != "exit 0":
        errors = [line for line in outcome.err.splitlines() if ": error: " in line]
        assert len(errors) == 1 and re.match(r"mlcnc \w+: error: ", errors[0]), outcome.err
        if errors[0].startswith("mlcnc train:"):  # nothing else on stderr
            assert len(outcome.err.strip().splitlines()) == 1, outcome.err
