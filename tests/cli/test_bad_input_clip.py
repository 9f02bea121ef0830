"""Keeps the "CLIP towers" section of docs/bad_input.md true: every row of its table is a
case run here with the real ``mlcnc`` command (the tiny random-weight CLIP configs; nothing
is downloaded: the hub counts as unreachable and its cache is empty)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from cli_cases import Cases, Outcome, Runner, doc_rows, tiny_args
from helpers import write_tiny_csv_dataset

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_method")]

SECTION = "## CLIP towers"
CASES = Cases()
case = CASES.case
OPEN_CLIP_NOISE = ("Parsing model identifier", "initialized randomly", "weights_only=False")


def clip_args(tmp_path, *extra: str) -> list[str]:
    data = write_tiny_csv_dataset(tmp_path / "data")
    args = [a for a in tiny_args(data, tmp_path / "run") if not a.startswith("method.")]
    return [*args, "data.image_size=32", "optim.epochs=1", *extra]


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    import mlcnc.models.backbone as backbone_module

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(backbone_module, "hub_reachable", lambda: False)


@case("clip-pretrained-offline")
def _(tmp_path, run):
    return run(*clip_args(tmp_path, "method.name=lmclip",
                          "method.backbone=open_clip:RN50-quickgelu", "method.pretrained=true"))  # fmt: skip


@case("clip-weights-missing")
def _(tmp_path, run):
    path = tmp_path / "nonexist.safetensors"
    result = run(*clip_args(tmp_path, "method.name=mlcnc_clip_b",
                            "method.backbone=open_clip:ViT-B-16-quickgelu",
                            f"method.pretrained={path}"))  # fmt: skip
    assert f"method.pretrained={path}: " in result[1]
    return result


@case("clip-weights-not-weights")
def _(tmp_path, run):
    jpeg = tmp_path / "photo.jpg"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(64))
    garbage = tmp_path / "fake.safetensors"
    garbage.write_bytes(b"garbage\n")
    for path in (jpeg, garbage):
        result = run(*clip_args(tmp_path, "method.name=mlcnc_clip_a",
                                "method.backbone=open_clip:mlcnc-tiny-rn",
                                f"method.pretrained={path}"))  # fmt: skip
        assert f"method.pretrained={path}: not a " in result[1], result[1]
        assert not any(noise in result[1] for noise in OPEN_CLIP_NOISE), result[1]
    return result


@case("dry-run-builds-the-method")
def _(tmp_path, run):
    plain = run(*clip_args(tmp_path, "method.name=lmclip", "method.backbone=resnet18",
                           "method.pretrained=false", "--dry-run"))  # fmt: skip
    assert plain == ("exit 2", plain[1]) and "needs a CLIP backbone" in plain[1], plain[1]
    return run(*clip_args(tmp_path, "method.name=mlcnc_clip_c", "method.pretrained=false",
                          "method.backbone=open_clip:mlcnc-tiny-vit", "--dry-run"))  # fmt: skip


@case("clip-image-size")
def _(tmp_path, run):
    args = clip_args(tmp_path, "method.name=lmclip", "method.backbone=open_clip:mlcnc-tiny-rn",
                     "method.pretrained=false", "data.image_size=48")  # fmt: skip
    dry = run(*args, "--dry-run")
    assert dry[0] == "exit 2" and "set data.image_size=32" in dry[1], dry[1]
    return run(*args)


@case("clip-templates")
def _(tmp_path, run):
    base = ("method.name=mlcnc_clip_b", "method.backbone=open_clip:mlcnc-tiny-vit",
            "method.pretrained=false", "method.model.embed_dim=16", "method.model.num_heads=2")  # fmt: skip
    for bad in ("[a photo]", "['{} and {}']"):
        result = run(*clip_args(tmp_path, *base, f"method.model.templates={bad}", "--dry-run"))
        assert result[0] == "exit 2" and "must hold '{}' once" in result[1], result[1]
    return run(*clip_args(tmp_path, *base, "method.model.templates=[]"))


@case("lmpt-n-ctx-vs-ctx-init")
def _(tmp_path, run):
    base = ("method.name=lmpt", "method.backbone=open_clip:mlcnc-tiny-rn",
            "method.pretrained=false", "method.model.ctx_init=a photo of a")  # fmt: skip
    for fits in ("method.model.n_ctx=4", "method.model.n_ctx=null"):
        result = run(*clip_args(tmp_path, *base, fits, "--dry-run"))
        assert result[0] == "exit 0", result[1]
    return run(*clip_args(tmp_path, *base, "method.model.n_ctx=2", "--dry-run"))


@case("clip-rebuilt-quietly")
def _(tmp_path, run):
    """predict in a real process: open_clip logs on the root logger, which pytest captures."""
    trained = run(*clip_args(tmp_path, "method.name=mlcnc_clip_a", "method.pretrained=false",
                             "method.backbone=open_clip:mlcnc-tiny-vit",
                             "method.loss.warmup_epochs=0"))  # fmt: skip
    assert trained[0] == "exit 0", trained[1]
    image = next((tmp_path / "data").rglob("*.png"))
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from mlcnc.cli import main; sys.exit(main())",
         "predict", str(tmp_path / "run"), str(image), "--no-progress"],
        capture_output=True, text=True, env=dict(os.environ), timeout=300, check=False,
    )  # fmt: skip
    assert not any(noise in done.stderr for noise in OPEN_CLIP_NOISE), done.stderr
    return Outcome((f"exit {done.returncode}", done.stdout + done.stderr))


ROWS = doc_rows(SECTION)


def test_every_documented_case_has_a_test_and_back() -> None:
    assert sorted(ROWS) == sorted(CASES)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(ROWS))
def test_documented_answer(name, tmp_path, capsys) -> None:
    message, expected = ROWS[name]
    result, text = CASES[name](tmp_path, Runner(capsys))
    assert result == expected, text
    assert message in text, text
    assert "Traceback" not in text and "Retrying" not in text
    if result != "exit 0":
        errors = [line for line in text.splitlines() if ": error: " in line]
        assert len(errors) == 1 and re.match(r"mlcnc train: error: ", errors[0]), text
