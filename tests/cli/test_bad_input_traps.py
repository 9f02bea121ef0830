"""Keeps the "Settings that train, but not as meant" and "Names that look alike" sections of
docs/bad_input.md true: every row of their tables is a case run here with the real ``mlcnc``
command; the output must contain the row's message and the exit code must be the row's.

Training uses the tiny method of tests/helpers.py (a second or two per run).
"""

from __future__ import annotations

import os
import re
import signal
import unicodedata
from pathlib import Path

import pytest

import bad_inputs
from cli_cases import Cases, Runner, doc_rows, tiny_args
from helpers import write_tiny_csv_dataset

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_method")]

SECTIONS = ("## Settings that train, but not as meant", "## Names that look alike")
CASES = Cases()
case = CASES.case


# ------------------------------------------------------------------ settings


@case("ema-barely-moved")
def _(tmp_path, run):
    data = write_tiny_csv_dataset(tmp_path / "data")
    out = tmp_path / "run"
    # No val split and select_metric on the EMA: the run selects the EMA of its last epoch.
    trained = run(
        *tiny_args(
            data, out, "train.ema_decay=0.9997", "train.select_metric=val_ema/map_total", val=False
        )
    )
    assert trained[0] == "exit 0", trained[1]
    table = run.out
    assert "selected model: last.ckpt, EMA weights" in table
    assert "of it is still the weights of the first step" in table, table
    assert "the EMA will average only 10 steps" in run.err  # said at the start too
    return run("evaluate", out)


@case("mlcnc-epochs-within-warmup")
def _(tmp_path, run):
    data = write_tiny_csv_dataset(tmp_path / "data")
    args = tiny_args(data, tmp_path / "run", "optim.epochs=1", "train.limit_train_batches=2")
    args = [a for a in args if not a.startswith("method.")]
    args += [
        "method.name=mlcnc",
        "method.backbone=resnet18",
        "method.pretrained=false",
        "method.loss.warmup_epochs=2",
    ]
    return run(*args)


@case("partial-eval")
def _(tmp_path, run):
    data = write_tiny_csv_dataset(tmp_path / "data")
    outcome = run(*tiny_args(data, tmp_path / "run", "train.limit_eval_batches=1"))
    assert "[mAP PARTIAL" in run.out + run.err  # the epoch lines
    assert "Test mAP (%), PARTIAL" in run.out  # the table
    return outcome


@case("num-nodes-without-launcher")
def _(tmp_path, run, monkeypatch):
    from mlcnc.engine.traps import LAUNCH_VARIABLES

    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    data = write_tiny_csv_dataset(tmp_path / "data")
    outcome = run(*tiny_args(data, tmp_path / "run", "train.num_nodes=2"))
    assert not (tmp_path / "run").exists()
    return outcome


@case("select-metric-never-defined")
def _(tmp_path, run):
    data = write_tiny_csv_dataset(tmp_path / "data")
    outcome = run(
        *tiny_args(
            data, tmp_path / "run", "data.head_threshold=100", "train.select_metric=val/map_head"
        )
    )
    assert "no val split" not in outcome[1]
    return outcome


@case("bad-image-hint")
def _(tmp_path, run):
    data = write_tiny_csv_dataset(tmp_path / "data")
    bad_inputs.truncated_jpeg(data / "images" / "train_003.png")
    # The check before a run reads headers: it passes; data check --decode finds it.
    found = run("data", "check", "--csv", data / "train.csv", "--decode")
    assert found[0] == "exit 1" and "train_003.png" in found[1], found[1]
    outcome = run(*tiny_args(data, tmp_path / "run"))
    listing = f"`mlcnc data check --csv {data / 'train.csv'} --decode` decodes every image"
    assert listing in outcome[1], outcome[1]
    return outcome


# ------------------------------------------------------------------------ names


def _dataset(folder: Path, rows: list[str], classes: str | None = "a\nb\n") -> Path:
    """train.csv in ``folder`` with ``rows`` after the header (and classes.txt), and one
    good image, images/good.png."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "images" / "good.png").write_bytes(bad_inputs.encoded())
    if classes is not None:
        (folder / "classes.txt").write_text(classes, encoding="utf-8")
    path = folder / "train.csv"
    path.write_text("image,labels\n" + "".join(f"{r}\n" for r in rows), encoding="utf-8")
    return path


CAFE_NFC, CAFE_NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


@case("windows-separators")
def _(tmp_path, run):
    outcome = run("data", "check", "--csv", _dataset(tmp_path, ["images\\good.png,a"]))
    assert "(that file exists)" in outcome[1]
    return outcome


@case("nfd-class-name")
def _(tmp_path, run):
    csv_path = _dataset(tmp_path, [f"images/good.png,{CAFE_NFD}"], f"{CAFE_NFC}\nb\n")
    return run("data", "check", "--csv", csv_path)


@case("nfc-nfd-twins-in-classes")
def _(tmp_path, run):
    rows = [f"images/good.png,{CAFE_NFC}", f"images/good2.png,{CAFE_NFD}"]
    (tmp_path / "b").mkdir()
    twins = run("data", "check", "--csv", _dataset(tmp_path / "b", rows, classes=None))
    assert twins[0] == "exit 1" and "another Unicode normal form" in twins[1], twins[1]
    classes = f"{CAFE_NFC}\n{CAFE_NFD}\n"
    return run("data", "check", "--csv", _dataset(tmp_path, rows[:1], classes))


@case("fifo-csv")
def _(tmp_path, run):
    fifo = tmp_path / "train.csv"
    os.mkfifo(fifo)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("reading the FIFO hung"))
    signal.alarm(30)
    try:
        return run("data", "check", "--csv", fifo)
    finally:
        signal.alarm(0)


@case("semicolon-in-class-name")
def _(tmp_path, run):
    return run("data", "check", "--csv", _dataset(tmp_path, ["images/good.png,a"], "a;b\nc\n"))


@case("renamed-options")
def _(tmp_path, run):
    data = write_tiny_csv_dataset(tmp_path / "data")
    out = tmp_path / "run"
    assert run(*tiny_args(data, out))[0] == "exit 0", run.err
    old = run("evaluate", out, "--data", f"test_csv={data / 'val.csv'}")
    assert old[0] == "exit 0" and "--data is now spelled KEY=VALUE after the run" in run.err
    assert "val.csv" in run.out or "8 images" in run.out or old[0] == "exit 0"
    new = run("evaluate", out, f"test_csv={data / 'val.csv'}")
    assert new[0] == "exit 0" and "is now spelled" not in new[1]
    assert (
        "is now spelled" not in run("inspect", out, "--split", "test", "--out", tmp_path / "a")[1]
    )
    return run("inspect", out, "--data", "test", "--out", tmp_path / "b")


# ------------------------------------------------------------------------ tests

ROWS = doc_rows(*SECTIONS)


def test_every_documented_case_has_a_test_and_back() -> None:
    assert sorted(ROWS) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_documented_answer(name, tmp_path, capsys, monkeypatch) -> None:
    message, expected = ROWS[name]
    function = CASES[name]
    extra = {"monkeypatch": monkeypatch} if "monkeypatch" in function.__code__.co_varnames else {}
    result, text = function(tmp_path, Runner(capsys), **extra)
    assert result == expected, text
    assert message in text, text
    assert "Traceback" not in text
    if result != "exit 0":
        errors = [line for line in text.splitlines() if ": error: " in line]
        assert len(errors) <= 1, text  # data check lists problems, one per line
        assert all(re.match(r"mlcnc [\w ]+: error: ", e) for e in errors), text
