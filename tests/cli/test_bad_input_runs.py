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
from helpers import TINY_METHOD, write_tiny_csv_dataset
from mlcnc.cli import main
from mlcnc.engine.checkpoint import load_checkpoint, save_checkpoint
from mlcnc.engine.run_folder import RunLock

pytestmark = pytest.mark.usefixtures("tiny_method")

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad_input.md"
SECTION = "## Runs, checkpoints and commands"
ROW = re.compile(r"^\| `([a-z0-9-]+)` \|(.*)\|(.*)\| `(.*)` \| (.*) \|$")


def _doc_rows() -> dict[str, tuple[str, str]]:
    """case -> (message, result) from the section's table."""
    rows, inside = {}, False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line.strip() == SECTION
        found = ROW.match(line) if inside else None
        if found:
            case, _, _, message, result = found.groups()
            assert case not in rows, f"case {case} twice in {DOC.name}"
            rows[case] = (message, result.strip())
    return rows


class Outcome(tuple):
    """("exit N", stdout + stderr), with ``out`` and ``err`` apart."""

    out: str = ""
    err: str = ""


CASES: dict[str, Callable[..., Outcome]] = {}


def case(name: str):
    def register(function):
        CASES[name] = function
        return function

    return register


class Runner:
    """Runs ``mlcnc`` in-process; returns ("exit N", stdout + stderr) and keeps both."""

    def __init__(self, capsys: pytest.CaptureFixture) -> None:
        self.capsys = capsys
        self.out = self.err = ""

    def __call__(self, *argv: str | Path) -> Outcome:
        self.capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:  # as the interpreter answers it: a text goes to stderr
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
            code = 1 if isinstance(exit_.code, str) else int(exit_.code or 0)
        captured = self.capsys.readouterr()
        self.out, self.err = captured.out, captured.err
        outcome = Outcome((f"exit {code}", captured.out + captured.err))
        outcome.out, outcome.err = captured.out, captured.err
        return outcome


def tiny_args(data: Path, out: Path, *extra: str) -> list[str]:
    """``mlcnc train`` of the tiny method on the tiny CSV dataset (2 epochs, CPU)."""
    return [
        "train",
        "--config",
        "csv",
        "--output",
        str(out),
        f"data.train_csv={data / 'train.csv'}",
        f"data.val_csv={data / 'val.csv'}",
        f"data.test_csv={data / 'test.csv'}",
        "data.image_size=24",
        "data.num_workers=0",
        "data.head_threshold=10",
        "data.tail_threshold=4",
        f"method.name={TINY_METHOD}",
        "method.pretrained=false",
        "optim.epochs=2",
        "optim.batch_size=5",
        "train.accelerator=cpu",
        "train.ema_decay=0.9",
        "train.progress=false",
        "train.plots=false",
        "train.num_threads=1",
        *extra,
    ]


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
    outcome = run(*tiny_args(data, copy, "--seed", "5", "--overwrite"))
    assert load_checkpoint(copy / "checkpoints" / "last.ckpt")["config"]["train"]["seed"] == 5
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 2  # the new run only
    assert (copy / "notes.txt").read_text() == "mine"
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


# ------------------------------------------------------------------------- tests

ROWS = _doc_rows()


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
