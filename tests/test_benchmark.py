"""The benchmark runner: table, aggregation, resume and failures, with a fake train function."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mlcnc.benchmark import (
    RESULT_FILE,
    aggregate,
    run_benchmark,
    split_overrides,
    table_order,
)
from mlcnc.config import Config, ConfigError
from mlcnc.methods import METHODS

BASE = {"erm": 40.0, "asl": 50.0, "mlcnc": 60.0}


def fake_metrics(method: str, seed: int) -> dict[str, float]:
    """Deterministic last-epoch record: group g of (method, seed) = base + offset_g + seed."""
    base = BASE[method] + seed
    record = {"epoch": 3, "loss/total": 0.1}
    for prefix, shift in (("test", 0.0), ("test_ema", 100.0)):
        record[f"{prefix}/map_total"] = base + shift
        record[f"{prefix}/map_head"] = None  # this split has no head class
        record[f"{prefix}/map_medium"] = base + shift + 1.0
        record[f"{prefix}/map_tail"] = base + shift - 2.0 * seed
    return record


class FakeTrain:
    """Records each call; fails or is 'interrupted' on request; writes a checkpoint file."""

    def __init__(self, fail: set[str] = frozenset(), interrupt: str | None = None) -> None:
        self.calls: list[tuple[str, int, Path | None]] = []
        self.configs: dict[str, Config] = {}
        self.fail, self.interrupt = fail, interrupt

    def __call__(self, cfg: Config, resume: Path | None) -> dict:
        name = f"{cfg.method.name}-seed{cfg.train.seed}"
        self.calls.append((cfg.method.name, cfg.train.seed, resume))
        self.configs[name] = cfg
        run_dir = Path(cfg.train.output)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"epoch 1")
        if name == self.interrupt:
            raise KeyboardInterrupt
        if name in self.fail:
            raise RuntimeError(f"boom in {name}")
        return fake_metrics(cfg.method.name, cfg.train.seed)


@pytest.fixture
def data_file(tmp_path: Path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text("data:\n  name: synthetic\n  image_size: 32\noptim:\n  epochs: 2\n")
    return str(path)


def bench(data_file: str, out: Path, train: FakeTrain, **kwargs):
    kwargs.setdefault("methods", ["erm", "asl", "mlcnc"])
    kwargs.setdefault("seeds", [0, 1, 2])
    return run_benchmark(
        data_file, output=out, train_fn=train, log=lambda _: None, plot=False, **kwargs
    )


def test_table_holds_mean_and_std_over_seeds(data_file: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    train = FakeTrain()
    result = bench(
        data_file, out, train, overrides=["optim.epochs=3", "method.backbone=test_resnet"]
    )
    # Seed-major order, every run once, nothing resumed.
    assert train.calls == [(m, s, None) for s in (0, 1, 2) for m in ("erm", "asl", "mlcnc")]
    # Every run shares the overrides; only method and seed differ.
    for name, cfg in train.configs.items():
        assert cfg.optim.epochs == 3 and cfg.data.image_size == 32
        assert cfg.method.backbone == "test_resnet"
        assert cfg.train.output == str(out / "runs" / name)
    assert [r.method for r in result.rows] == ["erm", "asl", "mlcnc"]
    erm = result.rows[0]
    assert erm.seeds == [0, 1, 2]
    assert erm.mean["total"] == pytest.approx(41.0)
    assert erm.std["total"] == pytest.approx(np.std([40, 41, 42], ddof=1))
    assert erm.mean["medium"] == pytest.approx(42.0)
    assert erm.mean["tail"] == pytest.approx(np.mean([40 - 0, 41 - 2, 42 - 4]))
    assert erm.std["tail"] == pytest.approx(np.std([40, 39, 38], ddof=1))
    assert np.isnan(erm.mean["head"])

    markdown = (out / "results.md").read_text()
    assert "last epoch, regular model" in markdown
    assert "| Method | Total | Head | Medium | Tail | Seeds |" in markdown
    assert "| ERM | 41.00 ± 1.00 | n/a | 42.00 ± 1.00 | 39.00 ± 1.00 | 0,1,2 |" in markdown
    assert "| MLC-NC | 61.00 ± 1.00 |" in markdown
    assert "Training time:" in markdown and "for 9 runs" in markdown
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["erm", "asl", "mlcnc"]
    assert float(rows[1]["total_mean"]) == pytest.approx(51.0)
    assert float(rows[1]["total_std"]) == pytest.approx(1.0)
    saved = json.loads((out / "runs" / "asl-seed2" / RESULT_FILE).read_text())
    assert saved["map"]["regular"]["total"] == 52.0
    assert saved["map"]["ema"]["total"] == 152.0
    assert saved["config"]["method"]["name"] == "asl"


def test_ema_table(data_file: str, tmp_path: Path) -> None:
    result = bench(data_file, tmp_path / "b", FakeTrain(), methods=["erm"], seeds=[0], model="ema")
    assert result.rows[0].mean["total"] == 140.0
    assert np.isnan(result.rows[0].std["total"])  # one seed: no spread, not 0
    markdown = (tmp_path / "b" / "results.md").read_text()
    assert "EMA model" in markdown and "| ERM | 140.00 | n/a |" in markdown
    assert "n=1" in markdown and "±" not in markdown.split("\n")[0]
    with open(tmp_path / "b" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["total_std"] == "" and rows[0]["total_mean"] == "140.0000"


def test_interrupted_benchmark_resumes_without_repeating(data_file: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    first = FakeTrain(interrupt="asl-seed1")
    with pytest.raises(KeyboardInterrupt):
        bench(data_file, out, first)
    assert len(first.calls) == 5  # erm, asl, mlcnc (seed 0), erm-1, then asl-1 interrupted
    # A partial table was written after each finished run.
    assert "| ERM | 40.50 ± 0.71 |" in (out / "results.md").read_text()
    # A run folder without a checkpoint (crashed at start) restarts from scratch.
    stale = out / "runs" / "mlcnc-seed2"
    stale.mkdir(parents=True)
    (stale / "metrics.jsonl").write_text("{}\n")

    second = FakeTrain()
    result = bench(data_file, out, second)
    resumed = out / "runs" / "asl-seed1"
    assert second.calls == [
        ("asl", 1, resumed),
        ("mlcnc", 1, None),
        ("erm", 2, None),
        ("asl", 2, None),
        ("mlcnc", 2, None),
    ]
    assert (out / "runs" / "mlcnc-seed2.incomplete" / "metrics.jsonl").is_file()
    assert all(row.seeds == [0, 1, 2] for row in result.rows)
    # A third run trains nothing.
    third = FakeTrain()
    assert bench(data_file, out, third).rows[2].mean["total"] == 61.0
    assert third.calls == []


def test_finished_run_with_another_config_is_refused(data_file: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    bench(data_file, out, FakeTrain(), methods=["erm"], seeds=[0])
    with pytest.raises(ConfigError, match=r"different config \(differs in: optim.epochs\)"):
        bench(data_file, out, FakeTrain(), methods=["erm"], seeds=[0], overrides=["optim.epochs=9"])


def test_a_run_made_before_a_key_existed_is_read_back(data_file: str, tmp_path: Path) -> None:
    """A finished run's result.json from an older mlcnc lacks the keys added since; they
    take today's defaults (as on --resume), so the run is read back, not refused; a key it
    set to a non-default value still counts."""
    out = tmp_path / "bench"
    bench(data_file, out, FakeTrain(), methods=["erm"], seeds=[0])
    result_file = out / "runs" / "erm-seed0" / RESULT_FILE
    payload = json.loads(result_file.read_text())
    del payload["config"]["data"]["train_transform"], payload["config"]["optim"]["schedule_epochs"]
    result_file.write_text(json.dumps(payload))
    again = FakeTrain()
    assert bench(data_file, out, again, methods=["erm"], seeds=[0]).rows[0].seeds == [0]
    assert again.calls == []
    payload["config"]["optim"]["backbone_lr_scale"] = 0.5
    result_file.write_text(json.dumps(payload))
    with pytest.raises(ConfigError, match=r"differs in: optim.backbone_lr_scale\)"):
        bench(data_file, out, FakeTrain(), methods=["erm"], seeds=[0])


def test_failed_run_is_reported_and_the_rest_go_on(data_file: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    result = bench(data_file, out, FakeTrain(fail={"asl-seed1"}))
    assert list(result.failures) == ["asl-seed1"]
    assert "boom in asl-seed1" in result.failures["asl-seed1"]
    assert {r.method: r.seeds for r in result.rows} == {
        "erm": [0, 1, 2],
        "asl": [0, 2],
        "mlcnc": [0, 1, 2],
    }
    markdown = (out / "results.md").read_text()
    assert "| ASL | 51.00 ± 1.41 |" in markdown and "0,2 |" in markdown
    assert (
        "Failed runs (left out of the table):\n- asl-seed1: RuntimeError: boom in asl-seed1"
        in markdown
    )


def test_per_method_overrides_and_reserved_keys(data_file: str, tmp_path: Path) -> None:
    train = FakeTrain()
    bench(
        data_file,
        tmp_path / "b",
        train,
        methods=["erm", "asl"],
        seeds=[0],
        overrides=["asl:method.loss.clip=0.1", "optim.lr=0.001"],
    )
    assert train.configs["asl-seed0"].method.loss["clip"] == 0.1
    assert train.configs["erm-seed0"].method.loss == {}
    assert train.configs["erm-seed0"].optim.lr == 0.001
    with pytest.raises(ConfigError, match=r"sets train\.seed"):
        split_overrides(["train.seed=3"], ["erm"])
    with pytest.raises(ConfigError, match=r"sets method\.name"):
        split_overrides(["erm:method.name=asl"], ["erm"])
    with pytest.raises(ConfigError, match="method 'db', which is not benchmarked"):
        split_overrides(["db:method.loss.preset=coco"], ["erm"])


def test_data_config_method_options_apply_where_they_fit(tmp_path: Path) -> None:
    data = tmp_path / "mlcnc_short.yaml"
    data.write_text("method:\n  name: mlcnc\n  loss:\n    warmup_epochs: 1\n")
    train, logged = FakeTrain(), []
    run_benchmark(str(data), ["erm", "mlcnc"], [0], tmp_path / "b", train_fn=train,
                  log=logged.append, plot=False)  # fmt: skip
    assert train.configs["mlcnc-seed0"].method.loss["warmup_epochs"] == 1
    assert train.configs["erm-seed0"].method.loss == {}
    assert any(
        "method.loss.warmup_epochs does not apply to method 'erm'; left out" in m for m in logged
    )
    # Given on the command line, an option a method does not take is an error, before training.
    train = FakeTrain()
    with pytest.raises(
        ConfigError, match=r"method.loss.warmup_epochs does not apply to method 'erm'"
    ):
        run_benchmark(str(data), ["erm", "mlcnc"], [0], tmp_path / "c", ["method.loss.warmup_epochs=2"],
                      train_fn=train, log=lambda _: None, plot=False)  # fmt: skip
    assert train.calls == []


def test_bad_requests_fail_before_any_training(data_file: str, tmp_path: Path) -> None:
    train = FakeTrain()
    with pytest.raises(ValueError, match=r"unknown methods \['bce'\]"):
        bench(data_file, tmp_path / "b", train, methods=["erm", "bce"])
    with pytest.raises(ValueError, match="duplicate seeds"):
        bench(data_file, tmp_path / "b", train, seeds=[0, 0])
    with pytest.raises(ValueError, match="model must be one of"):
        bench(data_file, tmp_path / "b", train, model="best")
    with pytest.raises(ConfigError):
        bench(data_file, tmp_path / "b", train, overrides=["optim.epoch=3"])  # typo
    assert train.calls == []


def test_run_without_test_metrics_is_an_error(data_file: str, tmp_path: Path) -> None:
    result = bench(
        data_file, tmp_path / "b", lambda cfg, resume: {"epoch": 1}, methods=["erm"], seeds=[0]
    )
    assert "without test metrics" in result.failures["erm-seed0"]
    assert result.rows == []


def test_plot_is_written(data_file: str, tmp_path: Path) -> None:
    result = run_benchmark(
        data_file,
        ["erm", "mlcnc"],
        [0, 1],
        tmp_path / "b",
        train_fn=FakeTrain(),
        log=lambda _: None,
    )
    png = result.files["plot"]
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_order_and_aggregate_order() -> None:
    assert table_order(METHODS.names())[:3] == ["erm", "rs", "rw"]
    assert table_order(["mlcnc", "asl", "erm"]) == ["erm", "asl", "mlcnc"]
    assert aggregate([], ["erm"]) == []


def csv_data_file(folder: Path, tmp_path: Path, *extra: str) -> str:
    """A data config for the shared tiny CSV dataset (conftest ``tiny_csv_dataset``)."""
    path = tmp_path / "tiny_csv.yaml"
    lines = [
        "data:",
        "  name: csv",
        f"  train_csv: {folder / 'train.csv'}",
        f"  val_csv: {folder / 'val.csv'}",
        f"  test_csv: {folder / 'test.csv'}",
        "  image_size: 24",
        "  num_workers: 0",
        "  head_threshold: 10",
        "  tail_threshold: 4",
        *extra,
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_db_runs_get_the_training_size_in_their_config(
    tiny_csv_dataset: Path, tmp_path: Path
) -> None:
    train = FakeTrain()
    BASE.setdefault("db", 45.0)
    BASE.setdefault("db_focal", 46.0)
    data = csv_data_file(tiny_csv_dataset, tmp_path)
    bench(data, tmp_path / "b", train, methods=["erm", "db", "db_focal"], seeds=[0],
          overrides=["db_focal:method.loss.num_samples=99"])  # fmt: skip
    # The tiny train split has 25 images; a given value is kept; csv data take the VOC preset.
    assert (
        train.configs["db-seed0"].method.loss.items()
        >= {"num_samples": 25, "preset": "voc"}.items()
    )
    assert (
        train.configs["db_focal-seed0"].method.loss.items()
        >= {"num_samples": 99, "preset": "voc"}.items()
    )
    assert train.configs["erm-seed0"].method.loss == {}
    coco = FakeTrain()
    bench(data, tmp_path / "c", coco, methods=["db"], seeds=[0], overrides=["data.name=coco_lt",
          "method.loss.num_samples=1909"])  # fmt: skip
    assert (
        coco.configs["db-seed0"].method.loss.items()
        >= {"num_samples": 1909, "preset": "coco", "map_mu": 0.2, "neg_scale": 2.0}.items()
    )


@pytest.mark.slow
def test_real_benchmark_end_to_end(tiny_csv_dataset: Path, tmp_path: Path, capsys) -> None:
    """``mlcnc benchmark`` with two methods through the real engine on the tiny CSV data,
    then a rerun that reads everything back."""
    from mlcnc.cli import main

    data = csv_data_file(tiny_csv_dataset, tmp_path)
    overrides = [
        "method.backbone=test_resnet",
        "method.pretrained=false",
        "mlcnc:method.model.embed_dim=16",
        "mlcnc:method.model.num_heads=2",
        "mlcnc:method.loss.warmup_epochs=1",
        "optim.epochs=2",
        "optim.batch_size=5",
        "train.accelerator=cpu",
        "train.progress=false",
        "train.plots=false",
        "train.ema_decay=0.5",
        "data.epoch_length=20",
    ]
    out = tmp_path / "bench"
    methods = ["db_focal", "mlcnc"]
    argv = ["benchmark", "--data", data, "--methods", ",".join(methods), "--seeds", "0"]
    assert main([*argv, "--output", str(out), *overrides]) == 0
    printed = capsys.readouterr().out
    assert "| DB-Focal |" in printed and "| MLC-NC |" in printed
    for method in methods:
        saved = json.loads((out / "runs" / f"{method}-seed0" / RESULT_FILE).read_text())
        assert saved["epoch"] == 2
        assert set(saved["map"]) == {"regular", "ema"}
        assert 0.0 < saved["map"]["regular"]["total"] <= 100.0
        assert (out / "runs" / f"{method}-seed0" / "checkpoints" / "last.ckpt").is_file()
    assert (out / "results.png").is_file()
    # Run again: everything is read back (a training call would fail the test), same numbers.
    again = run_benchmark(
        data, methods, [0], out, overrides, log=lambda _: None,
        train_fn=lambda cfg, resume: pytest.fail(f"{cfg.method.name} was trained again"),
    )  # fmt: skip
    assert again.failures == {}
    assert [r.mean["total"] for r in again.rows] == [
        json.loads((out / "runs" / f"{m}-seed0" / RESULT_FILE).read_text())["map"]["regular"][
            "total"
        ]
        for m in methods
    ]


def test_published_recipes_run_db_rows_under_the_db_paper_setting(tmp_path: Path) -> None:
    """`--recipes published`: CB-Focal takes DB's SGD recipe on VOC-LT, ERM keeps the shared one;
    `--recipes shared` keeps every method on the shared recipe."""
    BASE.setdefault("cb_focal", 44.0)
    published = FakeTrain()
    result = bench("voc_lt", tmp_path / "p", published, methods=["erm", "cb_focal"], seeds=[0],
                   recipes="published")  # fmt: skip
    cb = published.configs["cb_focal-seed0"]
    assert (cb.optim.optimizer, cb.optim.schedule, cb.optim.milestones) == ("sgd", "step", [5, 7])
    assert cb.method.model["neck_dim"] == 256 and cb.method.name == "cb_focal"
    assert published.configs["erm-seed0"].optim.optimizer == "adam"
    assert "cb_focal under its published recipe (voc_lt_db)" in result.files["markdown"].read_text()
    shared = FakeTrain()
    bench("voc_lt", tmp_path / "s", shared, methods=["erm", "cb_focal"], seeds=[0])
    assert shared.configs["cb_focal-seed0"].optim.optimizer == "adam"


def test_published_recipes_run_mlgcn_and_asl_under_their_authors_scripts(tmp_path: Path) -> None:
    """ML-GCN under demo_coco_gcn.py's recipe, ASL under train.py's, on COCO-LT."""
    BASE.setdefault("mlgcn", 45.0)
    BASE.setdefault("asl", 46.0)
    published = FakeTrain()
    result = bench("coco_lt", tmp_path / "p", published, methods=["mlgcn", "asl"], seeds=[0],
                   recipes="published")  # fmt: skip
    gcn, asl = published.configs["mlgcn-seed0"], published.configs["asl-seed0"]
    assert (gcn.method.name, gcn.method.backbone, gcn.data.image_size) == (
        "mlgcn",
        "resnet101",
        448,
    )
    assert (gcn.optim.optimizer, gcn.optim.lr, gcn.optim.backbone_lr_scale) == ("sgd", 0.1, 0.1)
    assert (gcn.optim.schedule, gcn.optim.epochs, gcn.optim.grad_clip) == ("constant", 20, 10.0)
    assert (gcn.data.train_transform, gcn.data.eval_transform) == (
        "multiscale_crop_flip",
        "resize_square",
    )
    assert (asl.method.name, asl.method.backbone, asl.data.normalize) == ("asl", "tresnet_m", False)
    assert (asl.optim.epochs, asl.optim.schedule_epochs, asl.optim.batch_size) == (41, 80, 128)
    assert asl.data.train_transform == "cutout_randaugment" and asl.train.ema_decay == 0.9997
    text = result.files["markdown"].read_text()
    assert "mlgcn under its published recipe (coco_lt_mlgcn)" in text
    assert "asl under its published recipe (coco_lt_asl)" in text


def test_tables_and_results_say_which_scores_ap_ranked(data_file: str, tmp_path: Path) -> None:
    out = tmp_path / "b"
    bench(data_file, out, FakeTrain(), methods=["erm", "asl"], seeds=[0],
          overrides=["asl:train.eval_scores=softmax"])  # fmt: skip
    markdown = (out / "results.md").read_text()
    assert (
        "Scores: logits (mlcnc) for ERM; softmax over classes (LMPT/LM-CLIP protocol) for ASL."
        in markdown
    )
    with open(out / "results.csv") as handle:
        assert [r["scores"] for r in csv.DictReader(handle)] == ["logits", "softmax"]
    saved = json.loads((out / "runs" / "asl-seed0" / RESULT_FILE).read_text())
    assert saved["scores"] == "softmax" and "softmax over classes" in saved["note"]
    # read back (a rerun): the same words
    bench(data_file, out, FakeTrain(), methods=["erm", "asl"], seeds=[0],
          overrides=["asl:train.eval_scores=softmax"])  # fmt: skip
    assert (
        "softmax over classes (LMPT/LM-CLIP protocol) for ASL." in (out / "results.md").read_text()
    )
    bench(data_file, tmp_path / "c", FakeTrain(), methods=["erm"], seeds=[0])
    assert "Scores: logits (mlcnc), every method." in (tmp_path / "c" / "results.md").read_text()
