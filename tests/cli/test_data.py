"""``mlcnc data stats`` and ``mlcnc data make-longtail`` on tiny data."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mlcnc.cli import data as data_cli
from mlcnc.data.longtail import make_longtail_subset
from mlcnc.data.readers import read_csv_split, write_csv_split

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mlcnc")
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_stats_prints_counts_groups_and_writes_plot_and_json(tiny_csv_dataset, tmp_path, capsys):
    plot, stats_json = tmp_path / "out" / "freq.png", tmp_path / "out" / "stats.json"
    argv = ["data", "stats", "--csv", str(tiny_csv_dataset / "train.csv"), "--plot", str(plot)]
    code = _run([*argv, "--json", str(stats_json), "--head", "10", "--tail", "5"])
    assert code == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[1:]) for line in out.splitlines()}
    expected = {
        ("circle", "17", "head"),
        ("square", "8", "medium"),
        ("triangle", "4", "tail"),
        ("star", "2", "tail"),
    }
    assert expected <= rows
    assert "head 1 / medium 1 / tail 2" in out
    assert "imbalance ratio (max/min n_c): 8.5" in out
    assert "1 without labels" in out and "circle + square: 4" in out
    assert plot.read_bytes().startswith(PNG_MAGIC)
    stats = json.loads(stats_json.read_text())
    assert stats["class_freq"] == [17, 8, 4, 2] and stats["num_images"] == 25
    assert stats["label_cardinality"] == pytest.approx((17 + 8 + 4 + 2) / 25)


def test_stats_of_a_named_benchmark_split(tiny_csv_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        "mlcnc.data.synthetic.ensure_synthetic_benchmark", lambda root=None: tiny_csv_dataset
    )
    plot = tmp_path / "p.png"
    assert (
        _run(["data", "stats", "--benchmark", "synthetic", "--split", "test", "--plot", str(plot)])
        == 0
    )
    assert "images: 8   classes: 4" in capsys.readouterr().out
    argv = ["data", "stats", "--benchmark", "synthetic", "--split", "dev"]
    assert _run([*argv, "--plot", str(tmp_path / "q.png")]) == 2  # a bad option value
    assert "--split dev: synthetic has no split 'dev'" in capsys.readouterr().err


def test_make_longtail_writes_the_subset_csv(tmp_path, capsys):
    rng = np.random.default_rng(1)
    folder = tmp_path / "full"
    folder.mkdir()
    names = [f"c{k}" for k in range(6)]
    labels = (rng.random((400, 6)) < [0.6, 0.4, 0.3, 0.2, 0.1, 0.05]).astype(np.uint8)
    lines = ["image,labels"]
    for i, row in enumerate(labels):
        (folder / f"{i}.png").write_bytes(b"")
        lines.append(f"{i}.png,{';'.join(names[c] for c in np.flatnonzero(row))}")
    (folder / "full.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "lt" / "train.csv"
    argv = ["data", "make-longtail", "--csv", str(folder / "full.csv"), "--out", str(out)]
    assert _run([*argv, "--max", "120", "--min", "2", "--seed", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    subset = read_csv_split(out)
    full = read_csv_split(folder / "full.csv")
    expected = make_longtail_subset(full.labels, 120, 2, seed=3)
    assert subset.class_names == full.class_names  # classes.txt written beside the CSV
    assert [p.resolve() for p in subset.image_paths] == [
        full.image_paths[i].resolve() for i in expected
    ]
    np.testing.assert_array_equal(subset.labels, full.labels[expected])


def test_real_console_script_smoke(tiny_csv_dataset, tmp_path):
    plot = tmp_path / "f.png"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from mlcnc.cli import main; sys.exit(main())", "data", "stats", "--csv", str(tiny_csv_dataset / "val.csv"), "--plot", str(plot)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "images: 8   classes: 4" in result.stdout and plot.is_file()


def test_write_then_stats_round_trip(tiny_csv_dataset, tmp_path, capsys):
    split = read_csv_split(tiny_csv_dataset / "test.csv")
    copy = write_csv_split(split.subset([0, 1, 2]), tmp_path / "copy" / "test.csv")
    assert _run(["data", "stats", "--csv", str(copy), "--plot", str(tmp_path / "p.png")]) == 0
    assert "images: 3   classes: 4" in capsys.readouterr().out


def test_bad_input_is_one_error_line_not_a_traceback(tmp_path, capsys):
    assert _run(["data", "stats", "--benchmark", "voc_lt", "--plot", str(tmp_path / "p.png")]) == 2
    assert "error: --benchmark voc_lt needs --voc2012-root DIR" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("image,labels\nmissing.png,a\n")
    argv = [
        "data",
        "make-longtail",
        "--csv",
        str(tmp_path / "bad.csv"),
        "--out",
        str(tmp_path / "o.csv"),
    ]
    assert _run(argv) == 1
    assert "bad.csv, line 2: image file not found" in capsys.readouterr().err


def test_check_summary_counts_rows_bad_rows_and_kinds_and_leaks_no_warning(tmp_path, capsys):
    import warnings

    from PIL import Image

    import bad_inputs
    from mlcnc.cli import main

    (tmp_path / "classes.txt").write_text("a\nb\n")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")  # Pillow's read-only buffer, uncopied
    (tmp_path / "good.png").write_bytes(bad_inputs.encoded())
    bad_inputs.truncated_jpeg(tmp_path / "cut.jpg")
    rows = ["dot.png,a", "good.png,b", "cut.jpg,a", "gone.png,b", "lost.png,a"]
    csv = tmp_path / "train.csv"
    csv.write_text("image,labels\n" + "".join(f"{r}\n" for r in rows))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["data", "check", "--csv", str(csv), "--decode"]) == 1
    out, err = capsys.readouterr()
    assert [str(w.message) for w in caught] == [] and err == ""
    assert out.splitlines()[-1] == (
        f"checked 5 rows in 1 split(s) ({csv}: 5), every image decoded: 3 bad row(s) of 5, "
        "3 problem(s) (missing: 2, corrupt: 1)"
    )
    assert main(["data", "check", "--csv", str(csv)]) == 1  # headers only: the cut JPEG passes
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"checked 5 rows in 1 split(s) ({csv}: 5), image headers only (--decode also decodes "
        "every image): 2 bad row(s) of 5, 2 problem(s) (missing: 2)"
    )


def test_make_longtail_names_the_options_behind_its_numbers(tiny_csv_dataset, tmp_path, capsys):
    from mlcnc.cli import main

    out = tmp_path / "lt.csv"
    argv = ["data", "make-longtail", "--csv", str(tiny_csv_dataset / "train.csv"), "--out"]
    assert main([*argv, str(out), "--max", "10", "--min", "1", "--head", "8", "--tail", "3"]) == 0
    text = capsys.readouterr().out
    assert (
        f"long-tailed subset of {tiny_csv_dataset / 'train.csv'}: class targets on a Pareto "
        "curve (--pareto-shape 6) from --max 10 down to --min 1, in co-occurrence order, "
        "--seed 0"
    ) in text
    assert "target   images  group" in text
    assert "  circle         10        9  head" in text  # a later class's step removed one
    assert "(images per class n_c; --head 8: head n_c >= 8, --tail 3: tail n_c < 3)" in text
    assert "images differ from target where" in text


def test_a_bad_training_image_names_the_command_that_lists_them_all(tmp_path):
    import bad_inputs
    from mlcnc.data import build_dataset
    from mlcnc.data.dataset import BadImageError

    (tmp_path / "classes.txt").write_text("a\nb\n")
    (tmp_path / "good.png").write_bytes(bad_inputs.encoded())
    bad_inputs.truncated_jpeg(tmp_path / "cut.jpg")
    csv = tmp_path / "my train.csv"
    csv.write_text("image,labels\ngood.png,a\ncut.jpg,b\n")
    dataset = build_dataset(read_csv_split(csv))
    with pytest.raises(BadImageError) as info:
        dataset[1]
    message = str(info.value)
    assert "\n" not in message and f"listed at {csv}, line 3" in message
    assert f"the first bad image met; `mlcnc data check --csv '{csv}' --decode` decodes" in message


def test_running_out_of_memory_while_decoding_is_not_a_corrupt_image(tmp_path, monkeypatch):
    """The reader every run uses (``read_image``) and ``data check`` say the image is too
    large for memory, with the limit to lower; the summary counts it apart from corrupt."""
    from PIL import Image

    from mlcnc.data import dataset
    from mlcnc.data.check import _kind, image_problem

    Image.new("RGB", (30, 20)).save(tmp_path / "a.png")

    def no_memory(*_):
        raise MemoryError

    monkeypatch.setattr(dataset, "_rgb_pixels", no_memory)
    with pytest.raises(dataset.BadImageError, match=r"too large to decode in memory \(30 x 20"):
        dataset.read_image(tmp_path / "a.png")
    reason = image_problem(tmp_path / "a.png", decode=True)
    assert "--max-pixels" in reason and _kind(reason) == "too large for memory"
