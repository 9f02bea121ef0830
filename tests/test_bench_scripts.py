"""The speed scripts in benchmarks/ run end to end in their tiny CPU modes (no timings are
checked, only that every code path runs and reports finite, well-formed figures)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _quiet(fn, *args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = fn(*args)
    return result, out.getvalue()


def test_gpu_check_skips_cleanly_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_check = _script("gpu_check")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, text = _quiet(gpu_check.main, ["--device", "cuda"])
    assert code == 0 and text.startswith("SKIP")


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu_runs_every_section(tmp_path: Path) -> None:
    gpu_check = _script("gpu_check")
    out = tmp_path / "gpu_check.json"
    gather = tmp_path / "bench_gather.py"  # stands in for the DDP helper's script
    gather.write_text("import sys\nprint('gather cost', sys.argv[1:])\n")
    argv = ["--device", "cpu", "--dry-run", "--json", str(out), "--gather-script", str(gather)]
    code, text = _quiet(gpu_check.main, argv)
    assert code == 0, text
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert {r["section"] for r in rows} == {
        "synthetic", "fp16", "data", "decode", "clip", "compile"
    }  # fmt: skip
    assert not [r for r in rows if "error" in r], [r for r in rows if "error" in r]
    assert all(math.isfinite(r["img_per_s"]) and r["img_per_s"] > 0 for r in rows)
    assert all(r.get("finite", True) for r in rows)
    runs = {(r["runner"], r["variant"]) for r in rows if r["section"] == "synthetic"}
    for runner in ("plain", "erm", "mlcnc"):
        assert (runner, "baseline") in runs and (runner, "cl+fused") in runs
    for variant in ("no_cudnn_bench", "channels_last", "cl+fused+no_sync"):
        assert ("erm", variant) in runs
    trained = [r for r in rows if r["section"] == "data" and r["runner"] != "loader"]
    assert {r["runner"] for r in trained} == {"erm", "mlcnc"}
    compiled = [r for r in rows if r["section"] == "compile"]
    assert compiled and all(r["switches"]["compile"] for r in compiled)
    assert {r["variant"] for r in rows if r["runner"] == "loader"} == {"engine", "uint8"}
    assert "synthetic/mlcnc/baseline/vs_erm" in report["ratios"]
    assert "synthetic/erm/cl+fused/vs_plain" in report["ratios"]
    assert "img/s" in text and "peak GiB" in text  # the summary table
    assert report["gather"]["rc"] == 0
    clip = {(r["runner"], r["variant"]): r for r in rows if r["section"] == "clip"}
    runners = ("clip_linear", "lmclip", "mlcnc_clip")
    assert set(clip) == {(r, v) for r in runners for v in ("baseline", "infer")}
    assert clip[("lmclip", "baseline")]["text_calls_per_step"] == 2  # labels + captions
    assert clip[("lmclip", "infer")]["text_calls"] == 0  # the stored label embeddings
    assert clip[("mlcnc_clip", "infer")]["text_tower"] == "absent"
    assert clip[("mlcnc_clip", "baseline")]["vs_linear"] > 0
    assert report["gather"]["tail"] == ["gather cost ['--help']"]


def test_bench_data_tiny_run_reports_every_variant(tmp_path: Path) -> None:
    bench_data = _script("bench_data")
    tiny = {"num_classes": 3, "train_max_count": 4, "train_min_count": 1,
            "val_per_class": 1, "test_per_class": 1, "image_size": 32}  # fmt: skip
    folder = bench_data.write_jpeg_dataset(tmp_path / "jpegs", 10, 80, 60, 90, scene_config=tiny)
    from mlcnc.data import read_csv_split

    splits = {s: read_csv_split(folder / f"{s}.csv") for s in ("train", "val", "test")}
    assert sum(len(s) for s in splits.values()) == 10
    from PIL import Image

    with Image.open(splits["train"].image_paths[0]) as image:
        assert image.size == (80, 60) and image.format == "JPEG"
    out = tmp_path / "data.json"
    args = ["--out", str(folder), "--num-images", "10", "--width", "80", "--height", "60",
            "--image-size", "24", "--stage-images", "3", "--loader-images", "8", "--batch", "4",
            "--workers", "0,1", "--repeats", "1", "--json", str(out)]  # fmt: skip
    # The folder is reused (same spec), so main does not need the tiny scene config.
    bench_data.SCENE_CONFIG = tiny
    code, text = _quiet(bench_data.main, args)
    assert code == 0, text
    report = json.loads(out.read_text())
    pipelines = report["pipelines"]
    assert set(pipelines) == {"baseline", "draft", "float_jitter", "jitter_first", "uint8_out",
                              "draft_uint8_out", "crop_only_uint8"}  # fmt: skip
    for name, p in pipelines.items():
        assert p["shape"] == [3, 24, 24]
        assert p["dtype"] == ("torch.uint8" if "uint8" in name else "torch.float32")
        assert p["ms"] > 0
    fidelity = report["draft_fidelity"]["all"]
    assert fidelity["crops"] > 0 and 0 <= fidelity["upsampled_draft"] <= 1
    assert all(v["img_per_s"] > 0 for v in report["loaders"].values())
    # Jitter on float instead of uint8: the same draws give the same image but for the
    # uint8 truncation after each of the three jitter operations (at most ~1.5 levels).
    equivalence = report["float_jitter_equivalence"]
    assert equivalence["mean_abs_diff_levels"] < 2.5
    assert -2.5 < equivalence["mean_diff_levels"] <= 0.0


@pytest.mark.slow
def test_bench_train_tiny_run_compares_engine_and_plain(tmp_path: Path, tiny_csv_dataset) -> None:
    bench_train = _script("bench_train")
    out = tmp_path / "train.json"
    args = ["--data", str(tiny_csv_dataset), "--backbone", "test_efficientnet",
            "--pretrained", "false", "--image-size", "24", "--batch", "4", "--steps", "2",
            "--epochs", "1", "--repeats", "1", "--threads", "1", "--workers", "0",
            "--eval-batches", "1", "--eval-batch", "4", "--plain-eval-batch", "8",
            "--override", "data.head_threshold=10", "--override", "data.tail_threshold=4",
            "--json", str(out)]  # fmt: skip
    code, text = _quiet(bench_train.main, args)
    assert code == 0, text
    report = json.loads(out.read_text())
    runs = {(r["runner"], r["method"]) for r in report["results"]}
    assert runs == {(a, m) for a in ("engine", "plain") for m in ("erm", "mlcnc")}
    for row in report["results"]:
        assert row["img_per_s"] > 0 and row["eval_seconds"] > 0
    ratios = report["ratios"]
    for key in ("t1_w0/erm/engine_vs_plain", "t1_w0/mlcnc_vs_erm/engine",
                "t1_w0/mlcnc/eval_wall_engine_vs_plain"):  # fmt: skip
        assert math.isfinite(ratios[key]) and ratios[key] > 0
