"""The selected model is the one used: a run records which checkpoint and variant (regular
or EMA) it selected -- on val where there is a val split, else the last epoch -- in every
checkpoint and in selection.json; load_trained, evaluate, predict, export and inspect given
a run folder use it and say so in one line; --checkpoint and --ema / --no-ema choose.

The runs use the tiny engine-test method (tests/helpers.py) on the tiny CSV data.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from helpers import tiny_config, write_tiny_csv_dataset
from mlcnc.cli import main
from mlcnc.config import ConfigError
from mlcnc.engine import evaluate_checkpoint, load_trained, train
from mlcnc.engine import selection as sel
from mlcnc.engine.checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    upgrade_checkpoint,
)

pytestmark = pytest.mark.usefixtures("tiny_method")


GROUPS = ("total", "head", "medium", "tail")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A 3-epoch run with a val split and a 2-epoch run without one."""

    root = tmp_path_factory.mktemp("selection")
    data = write_tiny_csv_dataset(root / "data")
    val = train(tiny_config(data, root / "val", "train.eval_every=1", "train.plots=false"))
    noval = train(
        tiny_config(
            data, root / "noval", "data.val_csv=null", "optim.epochs=2", "train.plots=false"
        )
    )
    return {"data": data, "root": root, "val": val, "noval": noval}


def _expected_selection(history: list[dict]) -> tuple[int, str, str, float]:
    """(epoch, variant, key, value): the first strictly best of val/ and val_ema/map_total,
    the regular model on a tie within an epoch (the default select_metric names it)."""
    best = None
    for record in history:
        for variant, key in (("regular", "val/map_total"), ("ema", "val_ema/map_total")):
            if best is None or record[key] > best[3]:
                best = (record["epoch"], variant, key, record[key])
    assert best is not None
    return best


def _weights_equal(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return all(torch.equal(state[k].cpu(), v.to(state[k].dtype)) for k, v in weights.items())


# --------------------------------------------------------------------------------------
# what a run selects and records


def test_a_run_with_val_selects_the_best_epoch_and_variant_and_records_it(runs) -> None:
    result = runs["val"]
    run = result.run_dir
    epoch, variant, key, value = _expected_selection(result.history)
    selection = result.selection
    assert selection["checkpoint"] == "best.ckpt" and selection["rule"] == "val"
    assert (selection["epoch"], selection["variant"], selection["metric"]) == (epoch, variant, key)
    assert selection["value"] == pytest.approx(value)
    assert json.loads((run / "selection.json").read_text()) == selection
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert best["epoch"] == epoch and best["selection"] == selection
    assert last["selection"] == selection  # the run's selection when last.ckpt was written
    assert result.best["epoch"] == epoch
    table = result.table()
    label = "EMA" if variant == "ema" else "regular"
    assert f"selected model: best.ckpt, {label} weights (selected on {key} = " in table
    marked = [line for line in table.splitlines() if "[selected]" in line]
    assert len(marked) == 1 and f", {label} [selected]" in marked[0]
    assert ("last epoch 3" if epoch == 3 else f"best on val (epoch {epoch})") in marked[0]


def test_without_val_the_last_epoch_is_selected(runs) -> None:
    result = runs["noval"]
    run = result.run_dir
    assert not (run / "checkpoints" / "best.ckpt").exists()
    expected = {
        "checkpoint": "last.ckpt",
        "variant": "regular",
        "epoch": 2,
        "rule": "last",
        "metric": None,
        "value": None,
        "select_metric": "val/map_total",
    }
    assert result.selection == expected
    assert json.loads((run / "selection.json").read_text()) == expected
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["selection"] == expected
    assert "selected model: last.ckpt, regular weights (the last epoch, 2" in result.table()
    assert "last epoch 2, regular [selected]" in result.table()


def test_select_metric_on_ema_selects_the_ema_without_val(tmp_path: Path) -> None:

    data = write_tiny_csv_dataset(tmp_path / "data")
    cfg = tiny_config(
        data,
        tmp_path / "run",
        "data.val_csv=null",
        "optim.epochs=1",
        "optim.schedule=constant",
        "train.select_metric=val_ema/map_total",
        "train.plots=false",
    )
    result = train(cfg)
    assert result.selection["variant"] == "ema" and result.selection["checkpoint"] == "last.ckpt"
    trained = load_trained(tmp_path / "run")
    assert trained.uses_ema and trained.message.startswith(
        f"loaded {tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}, EMA weights"
    )


def test_best_variant_rules() -> None:
    record = {"epoch": 2, "val/map_total": 50.0, "val_ema/map_total": 50.0}
    assert sel.best_variant(record, "val/map_total", True)[0] == "regular"
    assert sel.best_variant(record, "val_ema/map_total", True)[0] == "ema"
    assert sel.best_variant({**record, "val_ema/map_total": 51.0}, "val/map_total", True)[:2] == (
        "ema",
        "val_ema/map_total",
    )
    assert sel.best_variant({**record, "val_ema/map_total": 99.0}, "val/map_total", False)[0] == (
        "regular"
    )
    assert sel.best_variant({**record, "val/map_total": None}, "val/map_total", True)[0] == "ema"
    assert sel.best_variant({"epoch": 1}, "val/map_total", True) is None
    first = sel.on_val(record, "val/map_total", True)
    assert not sel.improves(sel.on_val({**record, "epoch": 3}, "val/map_total", True), first)
    assert sel.improves({**first, "value": 50.5}, first)


def test_selection_json_is_written_atomically(tmp_path: Path, monkeypatch) -> None:
    first = sel.on_last(1, "val/map_total", True)
    sel.write_selection(tmp_path, first)

    import mlcnc.io

    real_open = open

    class Full:  # a disk that fills up after the first bytes of the temporary file
        def __init__(self, *args, **kwargs) -> None:
            self.file = real_open(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.file.close()

        def write(self, data) -> None:
            self.file.write(data[:17])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(mlcnc.io, "open", Full, raising=False)
    with pytest.raises(OSError, match="No space left"):
        sel.write_selection(tmp_path, sel.on_last(2, "val/map_total", True))
    monkeypatch.undo()
    assert sel.read_selection(tmp_path) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["selection.json"]


# --------------------------------------------------------------------------------------
# what load_trained and evaluate load


def test_load_trained_of_a_run_folder_loads_the_selected_weights(runs) -> None:
    result = runs["val"]
    run = result.run_dir
    selection = result.selection
    best = load_checkpoint(run / "checkpoints" / "best.ckpt")
    trained = load_trained(run)
    assert trained.checkpoint == run / "checkpoints" / "best.ckpt"
    assert trained.uses_ema == (selection["variant"] == "ema")
    assert trained.selection == selection
    assert _weights_equal(trained.model, best[selection["variant"].replace("regular", "model")])
    label = "EMA" if selection["variant"] == "ema" else "regular"
    expected = (
        f"loaded {run / 'checkpoints' / 'best.ckpt'}, {label} weights (selected on "
        f"{selection['metric']} = {selection['value']:.2f} at epoch {selection['epoch']}"
    )
    # The EMA of this short run (decay 0.9, a few steps) is still mostly its first step's
    # weights: the line says so (mlcnc.engine.traps.ema_note).
    noted = label == "EMA" and trained.message.startswith(f"{expected}; WARNING: this EMA")
    assert trained.message == f"{expected})" or noted, trained.message
    # Explicit choices.
    chosen = load_trained(run, checkpoint="last", use_ema=False)
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert chosen.checkpoint.name == "last.ckpt" and not chosen.uses_ema
    assert _weights_equal(chosen.model, last["model"])
    assert "regular weights (as asked; the run selected best.ckpt" in chosen.message
    # A checkpoint file: the variant its recorded selection names.
    direct = load_trained(run / "checkpoints" / "last.ckpt")
    assert direct.uses_ema == (selection["variant"] == "ema")
    assert _weights_equal(direct.model, last["ema" if direct.uses_ema else "model"])
    if selection["epoch"] != 3:
        assert "the variant the run selected" in direct.message
    with pytest.raises(ConfigError, match="chooses a checkpoint of a run folder"):
        load_trained(run / "checkpoints" / "last.ckpt", checkpoint="best")


def test_evaluate_a_run_folder_reproduces_the_selected_checkpoints_metrics(runs) -> None:
    run = runs["val"].run_dir
    selection = runs["val"].selection
    logged = load_checkpoint(run / "checkpoints" / "best.ckpt")["metrics"]
    evaluated = evaluate_checkpoint(run)
    assert evaluated["checkpoint"] == str(run / "checkpoints" / "best.ckpt")
    assert (
        evaluated["epoch"] == selection["epoch"] and evaluated["selected"] == selection["variant"]
    )
    assert evaluated["loaded"].startswith(f"loaded {run / 'checkpoints' / 'best.ckpt'}")
    for name, key in (("regular", "test"), ("ema", "test_ema")):
        for group in GROUPS:
            assert evaluated["models"][name]["map"][group] == pytest.approx(
                logged[f"{key}/map_{group}"], abs=1e-6
            )
    assert "(selected)" in evaluated["table"]
    only = evaluate_checkpoint(run, checkpoint="last", use_ema=True)
    assert list(only["models"]) == ["ema"] and only["selected"] == selection["variant"]


def test_an_older_checkpoint_without_a_selection_loads_last_regular_and_says_so(
    runs, tmp_path: Path, capsys
) -> None:
    run = runs["val"].run_dir
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")
    for key in ("format", "selection", "precision"):  # an older mlcnc's checkpoint
        del state[key]
    old = tmp_path / "old_run"
    save_checkpoint(state, old / "checkpoints" / "last.ckpt")
    trained = load_trained(old)
    assert trained.checkpoint == old / "checkpoints" / "last.ckpt" and not trained.uses_ema
    assert _weights_equal(trained.model, state["model"])
    assert trained.message == (
        f"loaded {old / 'checkpoints' / 'last.ckpt'}, regular weights (the checkpoint "
        "records no selection (an older mlcnc): regular weights)"
    )
    evaluated = evaluate_checkpoint(old)
    assert evaluated["selected"] == "regular" and evaluated["precision"] == "auto"  # as configured
    for name, key in (("regular", "test"), ("ema", "test_ema")):
        assert evaluated["models"][name]["map"]["total"] == pytest.approx(
            state["metrics"][f"{key}/map_total"], abs=1e-6
        )
    assert main(["evaluate", str(old)]) == 0
    assert "an older mlcnc" in capsys.readouterr().out
    # Resuming it (one more epoch) records a selection again.
    data = runs["data"]
    more = tiny_config(data, old, "train.eval_every=1", "train.plots=false", "optim.epochs=4")
    resumed = train(more, resume=old, force=True)
    assert resumed.last["epoch"] == 4
    assert sel.read_selection(old) == resumed.selection
    assert resumed.selection["rule"] == "val"


def test_asking_for_ema_weights_a_checkpoint_lacks_gives_the_regular_and_says_so(
    runs, tmp_path: Path
) -> None:
    state = load_checkpoint(runs["noval"].run_dir / "checkpoints" / "last.ckpt")
    state["ema"] = None
    path = save_checkpoint(state, tmp_path / "no_ema.ckpt")
    trained = load_trained(path, use_ema=True)
    assert not trained.uses_ema
    assert "the checkpoint has no EMA weights (train.ema_decay=0)" in trained.message


# --------------------------------------------------------------------------------------
# the commands, as the README gives them, on a run without val (VOC-LT / COCO-LT have none)


def test_commands_on_a_run_folder_without_val_use_last_and_say_so(runs, tmp_path, capsys) -> None:
    run = runs["noval"].run_dir
    images = runs["data"] / "images"
    line = f"loaded {run / 'checkpoints' / 'last.ckpt'}, regular weights (the last epoch, 2"

    assert main(["evaluate", str(run), "--per-class", "--json", str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(line) and "regular (selected)" in printed
    logged = runs["noval"].last
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["models"]["regular"]["map"]["total"] == pytest.approx(
        logged["test/map_total"], abs=1e-6
    )
    assert main(["evaluate", str(run), "--checkpoint", "best"]) == 2
    assert "no val split" in capsys.readouterr().err

    out = tmp_path / "pred.csv"
    argv = ["predict", str(run), str(images), "--format", "csv", "--output", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    assert line in capsys.readouterr().err
    assert main([*argv, "--no-progress", "--ema", "--checkpoint", "last", "--overwrite"]) == 0
    assert "EMA weights (as asked; the run selected last.ckpt" in capsys.readouterr().err

    exported = tmp_path / "model.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(exported)]) == 0
    assert line in capsys.readouterr().err

    report = tmp_path / "inspect"
    assert main(["inspect", str(run), "--data", "train", "--out", str(report)]) == 0
    assert line in capsys.readouterr().err
    assert json.loads((report / "collapse.json").read_text())["weights"] == "regular"
    assert not math.isnan(json.loads((report / "collapse.json").read_text())["map"]["total"])


# --------------------------------------------------------------------------------------
# checkpoint formats: older files load through checkpoint.upgrade_checkpoint


def _as_format_1(run: Path, root: Path, *lacking: str) -> Path:
    """A copy of ``run`` whose checkpoints are written the way the previous release wrote
    them: no ``format`` key (format 1), and without ``lacking`` (keys older files lack)."""
    copy = root / "format1"
    shutil.copytree(run, copy)
    for path in sorted((copy / "checkpoints").glob("*.ckpt")):
        state = torch.load(path, weights_only=True)
        assert state["format"] == FORMAT
        for key in ("format", *lacking):
            del state[key]
        save_checkpoint(state, path)
    return copy


def _logits(trained, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return trained.model(batch).logits


@pytest.mark.parametrize(
    "lacking",
    [(), ("selection", "precision", "history", "test_ap", "data")],
    ids=["previous-release", "older"],
)
def test_a_format_1_checkpoint_loads_with_identical_logits_and_the_same_messages(
    runs, tmp_path: Path, lacking: tuple[str, ...]
) -> None:
    run = runs["val"].run_dir
    old = _as_format_1(run, tmp_path, *lacking)
    best = old / "checkpoints" / "best.ckpt"
    state = load_checkpoint(best)
    assert state["format"] == FORMAT and state["upgraded_from"] == 1
    assert state["filled"] == sorted(lacking)
    assert upgrade_checkpoint(state) is state  # the current format passes unchanged
    if "precision" in lacking:
        assert state["precision"] == "auto"  # the config's, as before
    batch = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    for use_ema in (None, False, True):
        # Without a recorded selection the default is the regular weights, as before.
        as_before = False if lacking and use_ema is None else use_ema
        current, loaded = load_trained(run, use_ema=as_before), load_trained(old, use_ema=use_ema)
        assert torch.equal(_logits(current, batch), _logits(loaded, batch))
        if not lacking:  # the previous release's file says what the current one says
            assert loaded.message == current.message.replace(str(run), str(old))
        elif use_ema is None:
            assert "records no selection (an older mlcnc): regular weights" in loaded.message


def test_a_checkpoint_of_a_newer_format_is_refused_in_one_line(runs, tmp_path: Path) -> None:
    path = tmp_path / "newer.ckpt"
    state = torch.load(runs["val"].run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    save_checkpoint({**state, "format": FORMAT + 1}, path)
    with pytest.raises(
        CheckpointError,
        match=rf"^{path} is a format-{FORMAT + 1} checkpoint of a newer mlcnc; [^\n]*$",
    ):
        load_checkpoint(path)
    assert main(["evaluate", str(path)]) == 1
    # A current-format file lacking a key was edited, not written by an older mlcnc.
    save_checkpoint({k: v for k, v in state.items() if k != "history"}, path)
    with pytest.raises(
        CheckpointError, match=r"not a complete format-2 mlcnc checkpoint: .*history"
    ):
        load_checkpoint(path)
