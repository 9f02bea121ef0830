"""Every CLIP-based method through the real CLI (``mlcnc.cli.main``) on tiny random-weight
open_clip towers: train, evaluate (ranking logits, then ``--scores softmax`` without
retraining), predict, export (TorchScript and ONNX, whose outputs must match PyTorch's
logits; a text-conditioned model exports its fixed label embeddings, not its text tower).
One tiny run per method, trained once for the module."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import tiny_data_overrides, write_tiny_csv_dataset
from mlcnc.cli import main

MLCNC_HEAD = ["method.model.embed_dim=16", "method.model.num_heads=2"]
CLIP_METHODS: dict[str, tuple[str, list[str]]] = {
    "lmclip": (
        "open_clip:mlcnc-tiny-vit",
        ["optim.optimizer=adamw", "optim.schedule=cosine", "train.eval_scores=softmax"],
    ),
    "lmpt": ("open_clip:mlcnc-tiny-rn", ["method.model.n_ctx=4"]),  # + a caption file (CSEL)
    "mlcnc_clip_a": ("open_clip:mlcnc-tiny-rn", MLCNC_HEAD),
    "mlcnc_clip_b": ("open_clip:mlcnc-tiny-vit", MLCNC_HEAD),
    "mlcnc_clip_c": ("open_clip:mlcnc-tiny-rn", MLCNC_HEAD),
    "mlcnc_clip_d": ("open_clip:mlcnc-tiny-vit", MLCNC_HEAD),
}
"""Each CLIP-based method -> the tiny tower it is tested on and its own overrides."""
TEXT_CONDITIONED = ("lmclip", "lmpt")  # a text tower in the model, not in the export
ONNX_METHODS = tuple(CLIP_METHODS) if os.environ.get("MLCNC_TEST_ONNX") == "all" else ("lmclip",)
"""ONNX export takes several seconds per model: checked on LM-CLIP (ViT tower, fixed label
embeddings), on every method with MLCNC_TEST_ONNX=all; TorchScript on every method."""


def test_every_clip_method_is_covered():
    """Every registered method whose shipped published recipe uses an open_clip backbone,
    and every MLC-NC-on-CLIP variant, is in CLIP_METHODS (so a new one is tested here)."""
    from mlcnc.config import load_config, shipped_configs
    from mlcnc.methods import METHODS
    from mlcnc.models.clip import is_clip_name

    shipped = set(shipped_configs())
    found = set()
    for name in METHODS.names():
        configs = set(METHODS.get(name).published_configs.values()) & shipped
        if name.startswith("mlcnc_clip_") or any(
            is_clip_name(load_config(c).method.backbone) for c in configs
        ):
            found.add(name)
    assert found <= set(CLIP_METHODS) <= set(METHODS.names())


def cli(*argv: str) -> None:
    code = main([str(a) for a in argv])
    assert code == 0, f"mlcnc {' '.join(map(str, argv))} exited {code}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_tiny_csv_dataset(tmp_path_factory.mktemp("clip_data"))
    rows = (root / "train.csv").read_text().splitlines()[1:]
    lines = [f"{row.split(',')[0]} a photo of a {row.split(',')[1]}" for row in rows]
    (root / "captions.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module", params=list(CLIP_METHODS))
def run(request: pytest.FixtureRequest, data: Path, tmp_path_factory) -> tuple[str, Path]:
    """(method, run folder) of a tiny run trained through ``mlcnc train``."""
    name = request.param
    backbone, extra = CLIP_METHODS[name]
    captions = [f"method.model.captions={data / 'captions.txt'}"] if name == "lmpt" else []
    out = tmp_path_factory.mktemp(name) / "run"
    cli("train", "--config", "csv", *tiny_data_overrides(data),
        f"method.name={name}", f"method.backbone={backbone}", "method.pretrained=false",
        *extra, *captions, "optim.epochs=1", "optim.batch_size=4",
        "train.limit_train_batches=1", "train.ema_decay=0", "train.accelerator=cpu",
        "train.precision=32-true", "train.eval_batch_size=16",
        "train.progress=false", "train.plots=false", "train.summary=false",
        "train.num_threads=2", f"train.output={out}")  # fmt: skip
    return name, out


@pytest.mark.slow
def test_evaluate_reproduces_training_and_rescores_without_retraining(run, tmp_path: Path):
    """``mlcnc evaluate`` scores as the run did (LM-CLIP trained with the anchors' softmax
    scores, the others with logits) and gives the other scores on request."""
    name, folder = run
    last = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()][-1]
    assert math.isfinite(last["loss/total"])
    cli("evaluate", folder, "--json", tmp_path / "run.json")
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["scores"] == ("softmax" if name == "lmclip" else "logits")
    assert report["models"]["regular"]["map"]["total"] == pytest.approx(
        last["test/map_total"], abs=1e-6
    )
    if name != "lmclip":
        return  # (one method is enough for the option; each evaluation takes a second)
    cli("evaluate", folder, "--scores", "logits", "--json", tmp_path / "logits.json")
    logits = json.loads((tmp_path / "logits.json").read_text())
    assert (
        logits["scores"] == "logits"
        and logits["models"]["regular"]["f1"]
        == (
            report["models"]["regular"]["f1"]  # thresholds stay on sigmoid probabilities
        )
    )


@pytest.mark.slow
def test_predict_gives_the_models_probabilities(run, data: Path, tmp_path: Path):
    from mlcnc.engine import load_trained

    _, folder = run
    out = tmp_path / "p.json"
    cli("predict", folder, data / "images", "--all-scores", "--output", out, "--no-progress")
    rows = json.loads(out.read_text())
    assert len(rows) == len(list((data / "images").iterdir()))
    trained = load_trained(folder)
    image = rows[0]["image"]
    from mlcnc.data.dataset import read_image

    batch = trained.transform(read_image(image))[None]
    with torch.no_grad():
        expected = torch.sigmoid(trained.model(batch).logits)[0].numpy()
    scores = rows[0]["probabilities"]
    got = np.array([scores[c] for c in trained.class_names])
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_pytorch_logits_without_a_text_tower(run, fmt: str, tmp_path: Path):
    from mlcnc.analysis.export import run_exported
    from mlcnc.engine import load_trained

    name, folder = run
    if fmt == "onnx" and name not in ONNX_METHODS:
        pytest.skip("ONNX is checked on lmclip; MLCNC_TEST_ONNX=all checks every method")
    out = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt")
    cli("export", folder, "--format", fmt, "--out", out, "--check-count", "4")
    trained = load_trained(folder)
    images = torch.randn(3, 3, 32, 32)  # another batch size than the check's
    with torch.no_grad():
        logits = trained.model(images).logits
    probabilities = run_exported(out, images)
    exported = np.log(probabilities) - np.log1p(-probabilities)  # back to logits
    np.testing.assert_allclose(exported, logits.numpy(), atol=2e-4, rtol=1e-4)
    names = exported_weight_names(out)
    assert names and not [n for n in names if "token_embedding" in n or "text_projection" in n]
    if name in TEXT_CONDITIONED:  # the image tower and fixed label embeddings, nothing else
        assert not [n for n in names if n.startswith("model.clip.")]
        assert fmt == "onnx" or "model.label_embeddings" in names  # (ONNX folds its name)


def exported_weight_names(path: Path) -> list[str]:
    """The names of the weights an exported file holds."""
    if path.suffix == ".onnx":
        import onnx

        return [init.name for init in onnx.load(str(path)).graph.initializer]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return list(torch.jit.load(str(path)).state_dict())
