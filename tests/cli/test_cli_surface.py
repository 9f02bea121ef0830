"""What a user sees around the commands: ``mlcnc --help`` without importing torch, warnings
as one line without source paths, and docs that match what a run writes."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from helpers import REPO_ROOT, TINY_METHOD, tiny_data_overrides, write_tiny_csv_dataset
from mlcnc.cli import main

HELP_SCRIPT = """
import sys
from mlcnc.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("TORCH" if "torch" in sys.modules else "NO-TORCH")
"""


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"]])
def test_help_does_not_import_torch(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT.format(argv=argv)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip().endswith("NO-TORCH"), done.stdout + done.stderr
    assert "usage: mlcnc" in done.stdout


def test_warnings_are_one_line_without_source_paths() -> None:
    script = (
        "import warnings\n"
        "from mlcnc.cli._warnings import one_line_warnings\n"
        "with one_line_warnings():\n"
        "    warnings.warn('group head has no class\\n  with a positive example', RuntimeWarning)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stderr == "mlcnc: warning: group head has no class with a positive example\n"


def test_commands_run_under_one_line_warnings(monkeypatch) -> None:
    import mlcnc.cli.config as config_command

    seen = []
    monkeypatch.setattr(
        config_command, "run_show", lambda args: seen.append(warnings.formatwarning)
    )
    assert main(["config", "show"]) == 0
    assert seen and seen[0].__name__ == "one_line"
    assert warnings.formatwarning.__name__ != "one_line"  # restored after the command


# ---------------------------------------------------------------------------- docs

USER_DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", [d for d in USER_DOCS if d.name != "ARCHITECTURE.md"])
def test_docs_cite_nothing_users_do_not_have(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    assert "mlcnc-spec" not in text
    assert not re.search(r"\bspec [A-Z]?\d", text), re.search(r".{40}\bspec [A-Z]?\d.{20}", text)
    assert "<<<<<<<" not in text and ">>>>>>>" not in text


@pytest.mark.slow  # a subprocess / a training run
def test_readme_names_every_file_a_run_writes(tmp_path: Path, tiny_method) -> None:
    data = write_tiny_csv_dataset(tmp_path / "data")
    run = tmp_path / "run"
    args = [
        "train", "--config", "csv", "--output", str(run),
        *tiny_data_overrides(data, image_size=24), f"method.name={TINY_METHOD}",
        "method.pretrained=false", "optim.epochs=2", "optim.batch_size=5",
        "train.accelerator=cpu", "train.progress=false", "train.num_threads=1",
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for path in run.rglob("*"):
        if path.is_file():
            top = path.relative_to(run).parts[0]
            name = path.name if top in ("plots", "checkpoints") or top == path.name else top
            shown = f"`{name}`" if top != "tensorboard" else "`tensorboard/`"
            assert shown in readme, f"README's run-folder list lacks {shown}"


def test_start_of_a_run_shows_config_model_and_steps(tmp_path: Path, capsys, tiny_method) -> None:
    data = write_tiny_csv_dataset(tmp_path / "data")
    args = [
        "train", "--config", "csv", "--output", str(tmp_path / "run"),
        *tiny_data_overrides(data, image_size=24, val=False), f"method.name={TINY_METHOD}",
        "method.pretrained=false", "optim.epochs=2", "optim.batch_size=5",
        "train.accelerator=cpu", "train.progress=false", "train.num_threads=1",
        "train.log_every=2", "train.plots=false",
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
    out = capsys.readouterr().out
    assert "config train: seed=0" in out and "log_every=2" in out
    model = next(line for line in out.splitlines() if line.startswith("model: "))
    assert re.search(
        r"\d[\d,]* parameters, [\d,]+ trainable, [\d.e-]+ GFLOPs per image at 24", model
    )
    assert "step 2  epoch 1/2  loss " in out and "step 10  epoch 2/2" in out
    assert main([*args[:4], str(tmp_path / "quiet"), *args[5:], "train.summary=false"]) == 0
    assert "config train:" not in capsys.readouterr().out


@pytest.mark.slow  # a subprocess / a training run
def test_real_command_warnings_have_no_source_path(tmp_path: Path) -> None:
    """Lightning replaces ``warnings.formatwarning`` when imported; the CLI's lines stay."""
    script = (
        "import warnings, sys\n"
        "from mlcnc.cli import main\n"
        "import mlcnc.cli.config as c\n"
        "def noisy(args):\n"
        "    import lightning.fabric  # sets its own formatwarning\n"
        "    from lightning.fabric.utilities.rank_zero import rank_zero_warn\n"
        "    rank_zero_warn('from lightning')\n"
        "    warnings.warn('from mlcnc', RuntimeWarning)\n"
        "    return 0\n"
        "c.run_show = noisy\n"
        "sys.exit(main(['config', 'show']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "mlcnc: warning: from mlcnc" in lines, done.stderr
    assert any(line.startswith("mlcnc: warning") and "from lightning" in line for line in lines)
    assert not re.search(r"\.py:\d+", done.stderr), done.stderr


def test_weights_export_loads_like_the_checkpoint(tmp_path: Path, capsys, tiny_method) -> None:
    from mlcnc.engine.trained import load_trained

    data = write_tiny_csv_dataset(tmp_path / "data")
    run = tmp_path / "run"
    args = [
        "train", "--config", "csv", "--output", str(run),
        *tiny_data_overrides(data, image_size=24),
        f"method.name={TINY_METHOD}", "method.pretrained=false", "optim.epochs=2",
        "optim.batch_size=5", "train.accelerator=cpu", "train.progress=false",
        "train.num_threads=1", "train.plots=false",
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
        for ema in ("--no-ema", "--ema"):
            out = tmp_path / f"model{ema}.pt"
            assert main(["export", str(run), "--format", "weights", "--out", str(out), ema]) == 0
            assert "wrote" in capsys.readouterr().out
            shipped, original = load_trained(out), load_trained(run, use_ema=ema == "--ema")
            assert not shipped.uses_ema and shipped.class_names == original.class_names
            for key, value in original.model.state_dict().items():
                assert torch.equal(shipped.model.state_dict()[key], value), key
            state = torch.load(out, weights_only=True)
            assert state["ema"] is None and state["history"] is None
            expected = "ema" if ema == "--ema" else "regular"
            assert state["selection"]["exported"]["weights"] == expected
            assert out.stat().st_size < (run / "checkpoints" / "best.ckpt").stat().st_size
        assert main(["evaluate", str(tmp_path / "model--ema.pt")]) == 0


def test_evaluate_writes_per_image_predictions(tmp_path: Path, capsys, tiny_method) -> None:
    import csv

    data = write_tiny_csv_dataset(tmp_path / "data")
    run = tmp_path / "run"
    args = [
        "train", "--config", "csv", "--output", str(run),
        *tiny_data_overrides(data, image_size=24, val=False), f"method.name={TINY_METHOD}",
        "method.pretrained=false", "optim.epochs=2", "optim.batch_size=5",
        "train.accelerator=cpu", "train.progress=false", "train.num_threads=1",
        "train.plots=false",
    ]  # fmt: skip
    out = tmp_path / "predictions.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
        assert main(["evaluate", str(run), "--predictions", str(out), "--threshold", "0.3"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 * 8  # regular and EMA, 8 test images each
    truth = (data / "test.csv").read_text().splitlines()[1:]
    regular = [r for r in rows if r["model"] == "regular"]
    for row, line in zip(regular, truth, strict=True):
        image, labels = line.split(",")
        assert row["image"].endswith(image) and row["labels"] == labels
        scores = {
            k.removeprefix("score:"): float(v) for k, v in row.items() if k.startswith("score:")
        }
        assert row["predicted"].split(";") == [c for c, p in scores.items() if p >= 0.3] or (
            row["predicted"] == "" and all(p < 0.3 for p in scores.values())
        )


def test_tune_per_class_thresholds_maximise_val_f1() -> None:
    import numpy as np

    from mlcnc.engine.thresholds import tune_per_class

    probabilities = np.array([[0.9, 0.5, 0.1], [0.8, 0.5, 0.2], [0.3, 0.4, 0.3], [0.2, 0.1, 0.4]])
    targets = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
    # class 0: t=0.3 predicts 3 images, 2 of them positive: F1 0.8 (t=0.9: 0.67)
    # class 1: the tie at 0.5 is predicted whole (F1 0.67); class 2: no positive on val
    assert tune_per_class(probabilities, targets).tolist() == [0.3, 0.5, 0.5]


def test_per_class_thresholds_tuned_on_val_stored_and_used(
    tmp_path: Path, capsys, tiny_method
) -> None:
    import json

    data = write_tiny_csv_dataset(tmp_path / "data")
    run = tmp_path / "run"
    args = [
        "train", "--config", "csv", "--output", str(run),
        *tiny_data_overrides(data, image_size=24),
        f"method.name={TINY_METHOD}", "method.pretrained=false", "optim.epochs=2",
        "optim.batch_size=5", "train.accelerator=cpu", "train.progress=false",
        "train.num_threads=1", "train.plots=false",
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
        first, second = tmp_path / "a.json", tmp_path / "b.json"
        for out in (first, second):
            evaluate = ["evaluate", str(run), "--thresholds", "per-class", "--json", str(out)]
            assert main(evaluate) == 0
        stored = json.loads((run / "thresholds.json").read_text())
        assert len(stored) == 2 and all(len(e["thresholds"]) == 4 for e in stored.values())
        a, b = json.loads(first.read_text()), json.loads(second.read_text())
        assert a["thresholds"] == b["thresholds"] and a["threshold"].startswith("per-class")
        capsys.readouterr()
        image = data / "images" / "test_000.png"
        assert main(["predict", str(run), str(image), "--thresholds", "per-class"]) == 0
        assert "per-class thresholds tuned on val" in capsys.readouterr().err


def test_checkpoint_history_and_deterministic(tmp_path: Path, capsys, tiny_method) -> None:
    from mlcnc.engine.checkpoint import load_checkpoint

    data = write_tiny_csv_dataset(tmp_path / "data")
    base = [
        "train", "--config", "csv", *tiny_data_overrides(data, image_size=24, val=False),
        f"method.name={TINY_METHOD}", "method.pretrained=false", "optim.epochs=4",
        "optim.batch_size=5", "train.accelerator=cpu", "train.progress=false",
        "train.num_threads=1", "train.plots=false", "train.deterministic=true",
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*base, "--output", str(tmp_path / "a"), "train.checkpoint_history=2"]) == 0
        assert not torch.are_deterministic_algorithms_enabled()  # switched off after the run
        assert main([*base, "--output", str(tmp_path / "b")]) == 0
    kept = sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("*.ckpt"))
    assert kept == ["epoch-0002.ckpt", "epoch-0004.ckpt", "last.ckpt"]
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "epoch-0002.ckpt")["epoch"] == 2
    first, second = (load_checkpoint(tmp_path / r / "checkpoints" / "last.ckpt") for r in "ab")
    for key, value in first["model"].items():  # deterministic: the same weights twice
        assert torch.equal(value, second["model"][key]), key


def _tiny_train(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--config", "csv", "--output", str(out),
        *tiny_data_overrides(data, image_size=24, val=False), f"method.name={TINY_METHOD}",
        "method.pretrained=false", "optim.epochs=2", "optim.batch_size=5",
        "train.accelerator=cpu", "train.progress=false", "train.num_threads=1",
        "train.plots=false", *extra,
    ]  # fmt: skip


def test_a_tracker_not_installed_is_one_line(
    tmp_path: Path, capsys, monkeypatch, tiny_method
) -> None:
    import mlcnc.engine.loggers as loggers

    monkeypatch.setitem(loggers.PACKAGES, "wandb", "wandb_not_installed_here")
    data = write_tiny_csv_dataset(tmp_path / "data")
    code = main(_tiny_train(data, tmp_path / "run", "train.loggers=[tensorboard,wandb]"))
    err = capsys.readouterr().err
    assert code == 2 and "the package 'wandb_not_installed_here' is not installed" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_trackers_get_the_config_and_the_scalars(tmp_path: Path, monkeypatch, tiny_method) -> None:
    import mlcnc.engine.loggers as loggers

    class Tracker:
        def __init__(self, run_dir, name):
            self.params, self.metrics, self.status = None, [], None

        def log_hyperparams(self, params):
            self.params = params

        def log_metrics(self, metrics, step):
            self.metrics.append((step, metrics))

        def finalize(self, status):
            self.status = status

    made = []
    monkeypatch.setattr(loggers, "PACKAGES", {})
    monkeypatch.setitem(
        loggers.FACTORIES, "mlflow", lambda *a: made.append(Tracker(*a)) or made[-1]
    )
    data = write_tiny_csv_dataset(tmp_path / "data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert (
            main(_tiny_train(data, tmp_path / "run", "train.loggers=[mlflow]", "train.log_every=2"))
            == 0
        )
    (tracker,) = made
    assert tracker.params["optim"]["epochs"] == 2 and tracker.status == "success"
    assert any("test/map_total" in m for _, m in tracker.metrics)
    assert any("step/loss_total" in m for _, m in tracker.metrics)
    assert not (tmp_path / "run" / "tensorboard").exists()  # not listed: not written


@pytest.mark.parametrize("argv", [["train", "--config", "synthetic"], ["--debug", "train"]])
def test_ctrl_c_while_parsing_is_one_line(argv, monkeypatch, capsys):
    """Ctrl-C before the subcommand runs (imports, parsing) is one line and exit 130; with
    --debug the interrupt propagates (its traceback)."""
    import mlcnc.cli as cli

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "parse_args", interrupted)
    if "--debug" in argv:
        with pytest.raises(KeyboardInterrupt):
            cli.main(argv)
        return
    assert cli.main(argv) == 130
    assert capsys.readouterr().err.strip() == "mlcnc train: error: interrupted (Ctrl-C)"


def test_output_piped_into_head_ends_quietly(tmp_path):
    """`mlcnc data stats ... | head`: the reader leaves before mlcnc writes (``true`` reads
    nothing); no Broken pipe error, exit 0."""
    data = write_tiny_csv_dataset(tmp_path / "data")
    command = f"{sys.executable} -m mlcnc data stats --csv {data / 'train.csv'} | true"
    done = subprocess.run(
        ["bash", "-c", command + '; echo "exit ${PIPESTATUS[0]}"'],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.stderr == "" and done.stdout.strip() == "exit 0", (done.stdout, done.stderr)


def test_a_benchmark_split_file_that_cannot_be_fetched_is_one_line(tmp_path, monkeypatch, capsys):
    """train on voc_lt offline, the split file not cached: one line with where to fetch it
    and its SHA-256, exit 1 (no traceback)."""
    import urllib.error
    import urllib.request

    from mlcnc.cli import main

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("MLCNC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    argv = ["train", "--config", "voc_lt", f"data.voc2012_root={tmp_path}",
            f"data.voc2007_root={tmp_path}", "--output", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mlcnc train: error: cannot download")
    assert "6e49185d5421236718f7393e952f5790e5c0cfeb1694892b1b971f59725d5ebc" in err
