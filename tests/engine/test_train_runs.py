"""End-to-end runs of the loop with the tiny method: run folder, checkpoints, resume, NaN
stop, precisions, evaluation reproducing the logged metrics (slow: each trains)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY_METHOD, onecycle_lrs, tiny_config, write_tiny_csv_dataset
from mlcnc.config import ConfigError
from mlcnc.engine import NonFiniteLossError, evaluate_checkpoint, load_trained, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_method")]

# --------------------------------------------------------------------------------------
# the loop


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A 3-epoch tiny run with a val split; the checkpoint after epoch 2 is kept aside."""

    root = tmp_path_factory.mktemp("engine")
    data = write_tiny_csv_dataset(root / "data")
    cfg = tiny_config(data, root / "run", "train.eval_every=1")
    saved: dict[int, Path] = {}
    import mlcnc.engine.loop as loop

    real_save = loop.save_checkpoint

    def keep_copies(state, path):
        real_save(state, path)
        if Path(path).name == "last.ckpt":
            copy = root / f"after_epoch_{state['epoch']}" / "checkpoints" / "last.ckpt"
            saved[state["epoch"]] = real_save(state, copy)
        return path

    loop.save_checkpoint = keep_copies
    try:
        result = train(cfg, config_name="tiny")
    finally:
        loop.save_checkpoint = real_save
    return data, root, cfg, result, saved


def test_run_folder_holds_config_metrics_checkpoints_and_plots(finished_run: tuple) -> None:
    _, root, _, result, _ = finished_run
    run = root / "run"
    assert result.run_dir == run
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "per_class.csv"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    for plot in ("loss_terms", "map_by_group", "ap_vs_frequency", "neural_collapse"):
        assert (run / "plots" / f"{plot}.png").is_file(), plot
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    last = records[-1]
    for key in ("loss/total", "loss/bce", "loss/half", "lr", "img_per_s", "test/nc1"):
        assert key in last, key
    for split in ("val", "val_ema", "test", "test_ema"):
        for group in ("total", "head", "medium", "tail"):
            assert 0.0 <= last[f"{split}/map_{group}"] <= 100.0, (split, group)
    assert last["loss/half"] == pytest.approx(0.5 * last["loss/bce"], rel=1e-5)
    csv_header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "test_ema/map_tail" in csv_header
    assert result.last == last
    table = result.table()
    assert "last epoch 3, regular" in table and "last epoch 3, EMA" in table
    # The first epoch reaching the maximum is the best (a later tie does not replace it);
    # the regular and the EMA model compete on val.
    best_val = max(records, key=lambda r: max(r["val/map_total"], r["val_ema/map_total"]))["epoch"]
    best_test = max(records, key=lambda r: r["test/map_total"])["epoch"]
    assert result.best["epoch"] == best_val
    if best_val == 3:
        assert "best on val (val/map_total): the last epoch" in table
    else:
        assert f"best on val (epoch {best_val}), EMA" in table
    if best_test == 3:
        assert "best epoch on test: the last epoch" in table
    else:
        assert f"best epoch ON TEST ({best_test}), regular [optimistic]" in table


def test_checkpoints_are_plain_and_self_contained(finished_run: tuple) -> None:
    _, root, _cfg, result, _ = finished_run
    state = torch.load(root / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 3 and state["step"] == 3 * 5  # 25 images / batch 5
    assert state["class_names"] == ["circle", "square", "triangle", "star"]
    assert state["class_freq"] == [17, 8, 4, 2]
    assert state["config"]["method"]["name"] == TINY_METHOD
    assert state["metrics"]["epoch"] == 3
    assert set(state["model"]) == set(state["ema"])
    assert not torch.equal(state["model"]["fc.weight"], state["ema"]["fc.weight"])
    # The criterion's buffer was summed at each epoch end: every positive of every epoch.
    assert state["criterion"]["seen_counts"].tolist() == [3 * 17, 3 * 8, 3 * 4, 3 * 2]
    best = torch.load(root / "run" / "checkpoints" / "best.ckpt", weights_only=True)

    # The regular and the EMA model compete on val.
    def on_val(record: dict) -> float:
        return max(record["val/map_total"], record["val_ema/map_total"])

    assert on_val(best["metrics"]) == max(on_val(r) for r in result.history)


def test_resume_from_a_mid_run_checkpoint_gives_the_same_final_weights(
    finished_run: tuple,
) -> None:
    _data, root, _cfg, _result, saved = finished_run
    resumed = train(None, resume=saved[2].parent.parent)
    assert resumed.run_dir == saved[2].parent.parent
    final = torch.load(root / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    again = torch.load(resumed.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert again["step"] == final["step"]
    for part in ("model", "ema", "criterion"):
        for key, value in final[part].items():
            assert torch.equal(again[part][key], value), (part, key)
    assert again["metrics"]["test/map_total"] == final["metrics"]["test/map_total"]
    assert again["metrics"]["loss/total"] == final["metrics"]["loss/total"]


def test_resume_with_another_config_is_refused_unless_forced(finished_run: tuple) -> None:
    data, root, _cfg, _, _ = finished_run
    changed = tiny_config(data, root / "run", "optim.lr=0.5")
    with pytest.raises(ConfigError, match=r"differs in: optim\.lr.*--force"):
        train(changed, resume=root / "run")
    # Forced: accepted (the run is complete, so nothing is left to train).
    result = train(changed, resume=root / "run" / "checkpoints" / "last.ckpt", force=True)
    assert result.last["epoch"] == 3


def test_load_trained_and_evaluate_checkpoint_reproduce_the_logged_metrics(
    finished_run: tuple,
) -> None:
    _, root, _, result, _ = finished_run
    trained = load_trained(root / "run", use_ema=True)
    assert not trained.model.training and trained.uses_ema
    assert trained.class_names == ["circle", "square", "triangle", "star"]
    assert trained.image_size == 24
    image = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8)
    assert trained.transform(image).shape == (3, 24, 24)
    evaluated = evaluate_checkpoint(root / "run" / "checkpoints" / "last.ckpt")
    last = result.last
    for name, key in (("regular", "test"), ("ema", "test_ema")):
        for group in ("total", "head", "medium", "tail"):
            assert evaluated["models"][name]["map"][group] == pytest.approx(
                last[f"{key}/map_{group}"], abs=1e-6
            )
    per_class = evaluated["models"]["ema"]["per_class"]
    assert [row["group"] for row in per_class] == ["head", "medium", "medium", "tail"]
    assert [row["train_positives"] for row in per_class] == [17, 8, 4, 2]
    assert all(0.0 <= row["f1"] <= 100.0 for row in per_class)
    mean_ap = np.mean([row["ap"] for row in per_class])
    assert mean_ap == pytest.approx(evaluated["models"]["ema"]["map"]["total"], abs=1e-6)
    assert evaluated["num_images"] == 8 and "Total" in evaluated["table"]


def test_non_finite_loss_stops_with_step_and_terms_and_keeps_last_checkpoint(
    tmp_path: Path,
) -> None:

    data = write_tiny_csv_dataset(tmp_path / "data")
    cfg = tiny_config(data, tmp_path / "run", "method.loss.nan_at_step=8")  # epoch 2, step 8
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg)
    message = str(info.value)
    assert "step 8 (epoch 2)" in message
    assert "total=nan" in message and "bce=nan" in message and "half=" in message
    assert "last good checkpoint" in message
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# --------------------------------------------------------------------------------------
# extending a run


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_finished_run_extended_with_more_epochs_continues_the_stretched_schedule(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """1 epoch, then --force optim.epochs=2, then 4: each epoch once in metrics.jsonl, and
    the lr at each epoch end is the new plan's (OneCycle over the new total, from the step
    reached), which failed before with 'Tried to step 9 times'."""

    data = write_tiny_csv_dataset(tmp_path / "data")
    run = tmp_path / "run"
    common = ("optim.batch_size=3", "train.ema_decay=0.5")  # 25 images: 8 steps per epoch
    first = train(tiny_config(data, run, "optim.epochs=1", *common))
    assert [r["epoch"] for r in first.history] == [1]
    with pytest.raises(ConfigError, match=r"optim\.epochs"):  # a changed plan needs --force
        train(tiny_config(data, run, "optim.epochs=2", *common), resume=run)

    extended = train(tiny_config(data, run, "optim.epochs=2", *common), resume=run, force=True)
    records = _records(run)
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["epoch"] for r in extended.history] == [1, 2] and extended.last == records[-1]
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 16
    assert state["scheduler"]["total_steps"] == 16 and state["scheduler"]["last_epoch"] == 16
    assert records[1]["lr"] == pytest.approx(onecycle_lrs(2, 8)[16])

    # The command line as the README gives it: the run's own config plus the override.
    from mlcnc.cli import main

    assert main(["train", "--resume", str(run), "--force", "optim.epochs=4"]) == 0
    assert "last epoch 4, regular" in capsys.readouterr().out
    records = _records(run)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    stretched = onecycle_lrs(4, 8)
    assert records[2]["lr"] == pytest.approx(stretched[24])  # mid-anneal: not a new cycle
    assert records[3]["lr"] == pytest.approx(stretched[32])
    assert records[2]["lr"] > 10 * records[1]["lr"]
    assert all(np.isfinite(r["loss/total"]) for r in records)
    selection = json.loads((run / "selection.json").read_text())
    assert selection["epoch"] in (1, 2, 3, 4)
    assert (run / "checkpoints" / selection["checkpoint"]).is_file()


# --------------------------------------------------------------------------------------
# precision: every CPU precision trains, evaluates, and `evaluate` reproduces the log


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [
        ("32-true", torch.float32),
        ("64-true", torch.float64),
        ("bf16-mixed", torch.float32),
        ("bf16-true", torch.bfloat16),
        ("16-true", torch.float16),  # Adam's eps must be a normal float16 (see below)
    ],
)
def test_every_cpu_precision_trains_and_evaluate_reproduces_the_logged_metrics(
    precision: str, dtype: torch.dtype, tmp_path: Path
) -> None:

    data = write_tiny_csv_dataset(tmp_path / "data")
    if precision == "16-true":
        with pytest.raises(ConfigError, match=r"optim\.eps=1e-08 is below the smallest normal"):
            train(tiny_config(data, tmp_path / "refused", "train.precision=16-true"))
    cfg = tiny_config(
        data,
        tmp_path / "run",
        f"train.precision={precision}",
        f"optim.eps={1e-4 if precision == '16-true' else 1e-8}",
        "optim.epochs=1",
        "optim.schedule=constant",
        "train.limit_train_batches=3",
        "train.ema_decay=0.5",
    )
    result = train(cfg)
    last = result.last
    assert last["step"] == 3 and np.isfinite(last["loss/total"])
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["precision"] == precision
    assert state["model"]["fc.weight"].dtype == dtype and state["ema"]["fc.weight"].dtype == dtype
    evaluated = evaluate_checkpoint(tmp_path / "run", checkpoint="last")
    assert evaluated["precision"] == precision
    for name, key in (("regular", "test"), ("ema", "test_ema")):
        scores = evaluated["models"][name]
        for group in ("total", "head", "medium", "tail"):
            assert scores["map"][group] == pytest.approx(last[f"{key}/map_{group}"], abs=1e-6)
        for f1 in ("CF1", "OF1"):
            assert scores["f1"][f1] == pytest.approx(last[f"{key}/{f1}"], abs=1e-6)
