"""Keeps docs/bad_input.md true: every row of its table is a case run here; the output must
contain the row's message and the result must be the row's (exit code, exception, or a
returned value)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import bad_inputs
from cli_cases import Cases, Outcome, Runner, doc_rows, tiny_args
from helpers import write_tiny_csv_dataset
from mlcnc.data import build_dataset, read_image
from mlcnc.data.check import check_trainable, drop_bad_rows
from mlcnc.data.readers import DataError, MultiLabelSplit, read_csv_split

ROWS_SECTION = "## The cases"  # the other sections: test_bad_input_runs.py, _traps.py
CASES = Cases()
case = CASES.case


def _dataset(folder: Path, rows: list[str], classes: str | None = "a\nb\n") -> Path:
    """train.csv in ``folder`` with ``rows`` after the header, and classes.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    if classes is not None:
        (folder / "classes.txt").write_text(classes)
    path = folder / "train.csv"
    path.write_text("image,labels\n" + "".join(f"{r}\n" for r in rows))
    return path


def _good(folder: Path, name: str = "good.png") -> str:
    (folder / name).write_bytes(bad_inputs.encoded())
    return name


def _check_one(tmp_path: Path, run: Runner, make: Callable[[Path], object], *extra: str) -> Outcome:
    """``data check`` of a CSV listing a good image and the one ``make`` writes as bad.xyz."""
    make(tmp_path / "bad.xyz")
    return run(
        "data", "check", "--csv", _dataset(tmp_path, [f"{_good(tmp_path)},a", "bad.xyz,b"]), *extra
    )


# ------------------------------------------------------------------------ images


@case("animated-image")
def _(tmp_path, run):
    names = []
    for fmt, suffix in (("GIF", "gif"), ("WEBP", "webp"), ("PNG", "png")):
        path = bad_inputs.animated(tmp_path / f"anim.{suffix}", fmt)
        image = read_image(path)
        assert image.shape == (3, 6, 8) and (image[0] > 250).all() and (image[2] < 5).all()
        names.append(f"{path.name},a")
    return run("data", "check", "--csv", _dataset(tmp_path, names))


@case("odd-pixel-modes")
def _(tmp_path, run):
    paths = [
        bad_inputs.cmyk_jpeg(tmp_path / "cmyk.jpg"),
        bad_inputs.palette_png(tmp_path / "palette.png")[0],
        bad_inputs.grey_alpha_png(tmp_path / "la.png")[0],
        bad_inputs.sixteen_bit_png(tmp_path / "g16.png")[0],
    ]
    (tmp_path / "grey.jpg").write_bytes(bad_inputs.encoded("L", "JPEG"))
    from PIL import Image

    Image.fromarray(np.eye(4, dtype=bool)).save(tmp_path / "bits.png")
    paths += [tmp_path / "grey.jpg", tmp_path / "bits.png"]
    for path in paths:
        image = read_image(path)
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3, path
    return run("data", "check", "--csv", _dataset(tmp_path, [f"{p.name},a" for p in paths]))


@case("huge-image")
def _(tmp_path, run):
    return _check_one(tmp_path, run, bad_inputs.huge_png)


@case("truncated-png")
def _(tmp_path, run):
    return _check_one(tmp_path, run, bad_inputs.truncated_png)


@case("truncated-jpeg")
def _(tmp_path, run):
    result, _ = _check_one(tmp_path, run, bad_inputs.truncated_jpeg)
    assert result == "exit 0"  # the header check alone cannot see it
    return run("data", "check", "--csv", tmp_path / "train.csv", "--decode")


@case("text-as-image")
def _(tmp_path, run):
    return _check_one(tmp_path, run, bad_inputs.text_file)


@case("folder-as-image")
def _(tmp_path, run):
    return _check_one(tmp_path, run, Path.mkdir)


@case("broken-symlink")
def _(tmp_path, run):
    return _check_one(tmp_path, run, lambda p: p.symlink_to(tmp_path / "gone.png"))


@case("missing-image")
def _(tmp_path, run):
    return _check_one(tmp_path, run, lambda p: None)


@case("empty-image")
def _(tmp_path, run):
    return _check_one(tmp_path, run, lambda p: p.write_bytes(b""))


@case("unsupported-format")
def _(tmp_path, run):
    return _check_one(tmp_path, run, lambda p: p.write_bytes(bad_inputs.encoded(fmt="BMP")))


@case("many-bad-images")
def _(tmp_path, run):
    (tmp_path / "dir.png").mkdir()
    csv = _dataset(tmp_path, [f"{_good(tmp_path)},a", "gone.png,a", "dir.png,b"])
    result, text = run("data", "check", "--csv", csv)
    lines = text.splitlines()
    assert lines[0] == f"{csv}:3: {tmp_path / 'gone.png'}: file not found"
    assert lines[1] == f"{csv}:4: {tmp_path / 'dir.png'}: a folder, not an image file"
    return result, text


@case("same-file-twice")
def _(tmp_path, run):
    return _check_one(tmp_path, run, lambda p: p.symlink_to(tmp_path / "good.png"))


@case("duplicate-path")
def _(tmp_path, run):
    (tmp_path / "img").mkdir()
    _good(tmp_path / "img", "a.png")
    return run("data", "check", "--csv", _dataset(tmp_path, ["./img/a.png,a", "img/a.png,b"]))


@case("train-test-overlap")
def _(tmp_path, run):
    train = _dataset(tmp_path, [f"{_good(tmp_path)},a", f"{_good(tmp_path, 'b.png')},b"])
    test = tmp_path / "test.csv"
    test.write_text("image,labels\ngood.png,a\n")
    return run(
        "data", "check", "--config", "csv", f"data.train_csv={train}", f"data.test_csv={test}"
    )


# ---------------------------------------------------------------- text files


@case("non-utf8-csv")
def _(tmp_path, run):
    csv = _dataset(tmp_path, [], classes=None)
    csv.write_bytes(f"image,labels\n{_good(tmp_path)},caf".encode() + b"\xe9\n")
    return run("data", "check", "--csv", csv)


@case("non-utf8-classes")
def _(tmp_path, run):
    csv = _dataset(tmp_path, [f"{_good(tmp_path)},a"])
    (tmp_path / "classes.txt").write_bytes(b"a\ncaf\xe9\n")
    return run("data", "check", "--csv", csv)


@case("bom-crlf")
def _(tmp_path, run):
    csv = _dataset(tmp_path, [])
    csv.write_bytes(f"\ufeffimage,labels\r\n{_good(tmp_path)},b;a\r\n".encode())
    (tmp_path / "classes.txt").write_bytes("\ufeffa\r\nb\r\n".encode())
    split = read_csv_split(csv)
    assert split.class_names == ["a", "b"] and split.labels.tolist() == [[1, 1]]
    return run("data", "check", "--csv", csv)


@case("non-utf8-file-name")
def _(tmp_path, run):
    name = b"caf\xe9.png"
    (tmp_path / os.fsdecode(name)).write_bytes(bad_inputs.encoded())
    csv = _dataset(tmp_path, [])
    csv.write_bytes(b"image,labels\n" + name + b",a\n")
    assert read_image(read_csv_split(csv).image_paths[0]).shape == (3, 12, 20)
    return run("data", "check", "--csv", csv)


@case("wrong-header")
def _(tmp_path, run):
    csv = _dataset(tmp_path, [])
    csv.write_text(f"path,labels\n{_good(tmp_path)},a\n")
    return run("data", "check", "--csv", csv)


@case("empty-csv")
def _(tmp_path, run):
    csv = _dataset(tmp_path, [])
    csv.write_text("")
    return run("data", "check", "--csv", csv)


@case("header-only-csv")
def _(tmp_path, run):
    return run("data", "check", "--csv", _dataset(tmp_path, []))


@case("malformed-row")
def _(tmp_path, run):
    return run("data", "check", "--csv", _dataset(tmp_path, [f"{_good(tmp_path)},a,b"]))


@case("unknown-class")
def _(tmp_path, run):
    return run("data", "check", "--csv", _dataset(tmp_path, [f"{_good(tmp_path)},zebra"]))


# -------------------------------------------------------------- runs, API


@case("bad-image-in-a-run")
def _(tmp_path, run):
    csv = _dataset(tmp_path, [f"{_good(tmp_path)},a", "gone.png,b"])
    dataset = build_dataset(read_csv_split(csv))
    try:
        dataset[1]
    except Exception as err:  # the doc names the exception type
        assert "train.csv, line 3" in str(err)
        return type(err).__name__, str(err)
    return "no error", ""


@case("skip-bad-images")
def _(tmp_path, run):
    csv = _dataset(tmp_path, ["gone.png,a", f"{_good(tmp_path)},b", "gone2.png,b"])
    split = read_csv_split(csv)
    kept, dropped = drop_bad_rows(split, progress=False)
    assert kept.lines == [3] and [p.line for p in dropped] == [2, 4]
    return "returns", "\n".join(str(p) for p in dropped)


@case("tiny-training-set")
def _(tmp_path, run):
    messages = []
    for labels, names in (([[1, 0]], ["a", "b"]), ([[1], [0]], ["a"])):
        split = MultiLabelSplit([tmp_path / f"{i}.png" for i in range(len(labels))], np.array(labels), names, "train.csv")  # fmt: skip
        with pytest.raises(DataError) as err:
            check_trainable(split)
        messages.append(str(err.value))
    return "DataError", "\n".join(messages)


# ------------------------------------------------------------ data commands


@case("stats-writes-nothing")
def _(tmp_path, run, monkeypatch):
    csv = _dataset(tmp_path / "data", ["a.png,a", "b.png,b"])
    for name in ("a.png", "b.png"):
        _good(tmp_path / "data", name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(tmp_path.rglob("*"))
    outcome = run("data", "stats", "--csv", csv)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written anywhere
    return outcome


@case("longtail-overwrites-input")
def _(tmp_path, run):
    csv = _dataset(tmp_path, [f"{_good(tmp_path)},a"])
    original = csv.read_bytes()
    (tmp_path / "link.csv").symlink_to(csv)
    for out in (tmp_path / "link.csv", tmp_path / "classes.txt", csv):
        result, text = run("data", "make-longtail", "--csv", csv, "--out", out, "--overwrite")
        assert result == "exit 1" and "would overwrite the input" in text, text
    assert csv.read_bytes() == original
    return result, text


@case("longtail-existing-output")
def _(tmp_path, run):
    csv = _dataset(tmp_path, [f"{_good(tmp_path)},a", f"{_good(tmp_path, 'b.png')},b"])
    out = tmp_path / "lt" / "train.csv"
    out.parent.mkdir()
    out.write_text("keep me")
    outcome = run("data", "make-longtail", "--csv", csv, "--out", out, "--max", "1")
    assert out.read_text() == "keep me"
    result, text = run(
        "data", "make-longtail", "--csv", csv, "--out", out, "--max", "1", "--overwrite"
    )
    assert result == "exit 0", text
    assert read_csv_split(out).class_names == ["a", "b"]
    return outcome


@case("pareto-shape-zero")
def _(tmp_path, run):
    csv = _dataset(tmp_path, [f"{_good(tmp_path)},a"])
    longtail = ("data", "make-longtail", "--csv", csv, "--out", tmp_path / "o.csv")
    for value in ("nan", "inf", "-1"):
        result, text = run(*longtail, "--pareto-shape", value)
        assert result == "exit 2" and "argument --pareto-shape" in text, text
    assert not (tmp_path / "o.csv").exists()
    return run(*longtail, "--pareto-shape", "0")


DATA_COUNTS = {  # each numeric option of the data commands -> (its command, a refused value)
    "--head": ("stats", "-5"), "--tail": ("stats", "-50"), "--top": ("stats", "-3"),
    "--max": ("make-longtail", "-1"), "--min": ("make-longtail", "-2"),
    "--seed": ("make-longtail", "-1"), "--max-pixels": ("check", "0"),
    "--workers": ("check", "-1"),
}  # fmt: skip


@case("data-option-values")
def _(tmp_path, run):
    csv = _dataset(tmp_path, [f"{_good(tmp_path)},a"])
    where = {"stats": (), "check": (), "make-longtail": ("--out", tmp_path / "o.csv")}
    for option, (command, value) in DATA_COUNTS.items():
        for bad in (value, "1.5", "x"):
            result, text = run("data", command, "--csv", csv, *where[command], option, bad)
            assert result == "exit 2" and f"argument {option}: expected a whole" in text, text
            assert "images:" not in text  # refused before any work
    assert not (tmp_path / "o.csv").exists()
    return run("data", "stats", "--csv", csv, "--head", "-5", "--tail", "-50")


@case("tail-above-head")
def _(tmp_path, run):
    csv = _dataset(tmp_path, [f"{_good(tmp_path)},a"])
    longtail = ("data", "make-longtail", "--csv", csv, "--out", tmp_path / "o.csv")
    result, text = run(*longtail, "--head", "5", "--tail", "50")
    assert result == "exit 2" and "--tail 50 is above --head 5" in text, text
    assert not (tmp_path / "o.csv").exists()
    return run("data", "stats", "--csv", csv, "--head", "5", "--tail", "50")


def _longtail_refused(tmp_path, run, largest: str, smallest: str):
    """make-longtail with --max / --min as given; nothing may be written."""
    csv = _dataset(tmp_path, [f"{_good(tmp_path)},a"])
    outcome = run("data", "make-longtail", "--csv", csv, "--out", tmp_path / "o.csv", "--max", largest, "--min", smallest)  # fmt: skip
    assert not (tmp_path / "o.csv").exists()
    return outcome


@case("longtail-min-above-max")
def _(tmp_path, run):
    return _longtail_refused(tmp_path, run, "2", "8")


@case("longtail-max-zero")
def _(tmp_path, run):
    return _longtail_refused(tmp_path, run, "0", "0")


@case("stats-plot-not-png")
def _(tmp_path, run):
    csv = _dataset(tmp_path, [f"{_good(tmp_path)},a"])
    outcome = run("data", "stats", "--csv", csv, "--plot", tmp_path / "out.pdf.txt", "--json", tmp_path / "s.json")  # fmt: skip
    assert outcome.out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["classes.txt", "good.png", "train.csv"]  # fmt: skip
    return outcome


@case("stats-benchmark-roots")
def _(tmp_path, run):
    result, text = run("data", "stats", "--benchmark", "coco_lt")
    assert result == "exit 2" and "--benchmark coco_lt needs --coco-root DIR" in text, text
    outcome = run("data", "stats", "--benchmark", "voc_lt")
    # the advice is what the command takes: the roots given, the next answer is about them
    result, text = run("data", "stats", "--benchmark", "voc_lt", "--voc2012-root", tmp_path / "a", "--voc2007-root", tmp_path / "b", "--split-file", tmp_path / "s.json")  # fmt: skip
    assert "needs" not in text and "takes no" not in text, text
    return outcome


@case("mlcnc-home-not-a-folder")
def _(tmp_path, run, monkeypatch):
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setenv("MLCNC_HOME", str(tmp_path / "afile" / "sub"))
    result, text = run("data", "stats", "--benchmark", "synthetic")
    assert result == "exit 2" and "MLCNC_HOME=" in text and "is a file, not a folder" in text, text
    monkeypatch.setenv("MLCNC_HOME", str(tmp_path / "afile"))
    outcome = run("data", "stats", "--benchmark", "synthetic")
    assert (tmp_path / "afile").read_text() == "not a folder"
    return outcome


@case("decode-out-of-memory")
def _(tmp_path, run):
    from PIL import Image

    Image.new("L", (8000, 8000)).save(tmp_path / "big.png")  # 64 MB grey, 192 MB as RGB
    csv = _dataset(tmp_path, [f"{_good(tmp_path)},a", "big.png,b"])
    return _memory_limited(["data", "check", "--csv", str(csv), "--decode", "--max-pixels", "100000000"])  # fmt: skip


def _memory_limited(argv: list[str], headroom: int = 128 * 1024**2) -> Outcome:
    """The real command in a subprocess whose address space, once torch and Pillow are
    imported, may grow by ``headroom`` bytes only."""
    import subprocess
    import sys

    code = (
        "import resource, sys; from mlcnc.cli import build_parser, main; import mlcnc.config, "
        "mlcnc.data.check, PIL.PngImagePlugin; build_parser(); "
        "size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize(); "
        f"resource.setrlimit(resource.RLIMIT_AS, (size + {headroom}, size + {headroom})); "
        "sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    outcome = Outcome((f"exit {done.returncode}", done.stdout))
    outcome.out = done.stdout
    return outcome


# --------------------------------------------------------- issue 21: paths, memory


def thin_png(path: Path, width: int = 1_000_000, height: int = 1) -> Path:
    """A ``width`` x ``height`` grey PNG (a few hundred bytes for 1 x 1,000,000): under the
    pixel limit, but resizing its short side to a model's input makes it enormous."""
    from PIL import Image

    Image.new("L", (width, height)).save(path)
    return path


@case("extreme-aspect-ratio")
def _(tmp_path, run):
    thin_png(tmp_path / "thin.png")
    csv = _dataset(tmp_path, [f"{_good(tmp_path)},a", "thin.png,b"])
    result, text = run("data", "check", "--csv", csv, "--decode")
    assert result == "exit 1" and "thin.png" in text, text
    return run("data", "check", "--csv", csv)  # the header check alone finds it


@case("nul-byte-in-path")
def _(tmp_path, run):
    return run("data", "check", "--csv", _dataset(tmp_path, [f"{_good(tmp_path)}\0x,a"]))


@case("stats-output-is-input")
def _(tmp_path, run):
    csv = _dataset(tmp_path, [f"{_good(tmp_path)},a"])
    before = csv.read_bytes()
    link = tmp_path / "link.json"
    link.symlink_to(csv)
    for option in ("--json", "--plot"):
        for target in (csv, link, tmp_path / "sub" / ".." / "train.csv"):
            result, text = run("data", "stats", "--csv", csv, option, target)
            assert result == "exit 1" and "input of the command" in text, text
    result, text = run("data", "stats", "--csv", csv, "--json", tmp_path)  # a folder
    assert result == "exit 1" and "an existing folder" in text, text
    assert csv.read_bytes() == before
    return run("data", "stats", "--csv", csv, "--json", csv)


@case("mlcnc-home-cannot-be-made")
def _(tmp_path, run, monkeypatch):
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc (a folder where no folder can be made)")
    monkeypatch.setenv("MLCNC_HOME", "/proc/mlcnc-home-test")
    return run("data", "stats", "--benchmark", "synthetic", "--split", "train")


@case("stats-two-outputs-one-path")
def _(tmp_path, run):
    csv = _dataset(tmp_path, [f"{_good(tmp_path)},a"])
    out = tmp_path / "p.png"
    result = run("data", "stats", "--csv", csv, "--plot", out, "--json", out)
    assert not out.exists() and "an input" not in result[1], result[1]
    return result


@case("stats-benchmark-option-with-csv")
def _(tmp_path, run):
    csv = _dataset(tmp_path, [f"{_good(tmp_path)},a"])
    for option in ("--voc2012-root", "--coco-root", "--synthetic-root", "--split-file"):
        result, text = run("data", "stats", "--csv", csv, option, tmp_path)
        assert result == "exit 2" and f"{option} {tmp_path}: applies to --benchmark" in text
    result, text = run("data", "stats", "--benchmark", "synthetic", "--coco-root", tmp_path)
    assert result == "exit 2" and "--benchmark synthetic does not use it" in text, text
    return run("data", "stats", "--csv", csv, "--split", "val")


PLAIN_METHOD = ("method.name=erm", "method.backbone=resnet18")  # registered in the package


@case("plateau-min-lr-above-lr")
def _(tmp_path, run):
    data = write_tiny_csv_dataset(tmp_path / "data")
    base = [*tiny_args(data, tmp_path / "run"), *PLAIN_METHOD, "--dry-run"]
    for bad, says in (
        (["optim.schedule=step", "optim.milestones=[3,2]"], "must be increasing"),
        (["optim.schedule=plateau", "optim.gamma=1"], "gamma (1) must be below 1"),
        (["optim.base_momentum=0.97", "optim.max_momentum=0.9"], "is above max_momentum"),
    ):
        result, text = run(*base, *bad)
        assert result == "exit 2" and says in text, text
    return run(*base, "optim.schedule=plateau", "optim.plateau_min_lr=1")


@case("softmax-scores-one-class")
def _(tmp_path, run):
    data = write_tiny_csv_dataset(tmp_path / "data")
    first = (data / "classes.txt").read_text().split()[0]
    (data / "classes.txt").write_text(first + "\n")
    for split in ("train", "val", "test"):
        path = data / f"{split}.csv"
        rows = path.read_text().splitlines()
        kept = [f"{r.split(',')[0]},{first if first in r.split(',')[1].split(';') else ''}"
                for r in rows[1:]]  # fmt: skip
        path.write_text("\n".join([rows[0], *kept]) + "\n")
    out = tmp_path / "run"
    result = run(*tiny_args(data, out, *PLAIN_METHOD, "train.eval_scores=softmax"))
    assert not (out / "checkpoints").exists(), result[1]
    return result


# ------------------------------------------------------------------------- tests

ROWS = doc_rows(ROWS_SECTION)


def test_every_documented_case_has_a_test_and_back():
    assert len(ROWS) >= 30
    assert sorted(ROWS) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_documented_answer(name, tmp_path, capsys, monkeypatch):
    message, expected = ROWS[name]
    function = CASES[name]
    extra = {"monkeypatch": monkeypatch} if "monkeypatch" in function.__code__.co_varnames else {}
    result, text = function(tmp_path, Runner(capsys), **extra)
    assert result == expected, text
    assert message in text, text
    assert "Traceback" not in text
    if result == "exit 1":
        errors = [line for line in text.splitlines() if ": error: " in line]
        assert len(errors) <= 1  # a user error is one line
