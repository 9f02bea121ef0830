"""Export: ONNX and TorchScript files that match PyTorch within 1e-4 on real images, with
class names and preprocessing in their metadata; and a check that does fail when they differ."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mlcnc.analysis.export import (
    ExportCheckError,
    ProbabilityModel,
    check_export,
    export_metadata,
    export_model,
    read_metadata,
    run_exported,
)
from mlcnc.analysis.preprocessing import Preprocessing
from mlcnc.cli import main
from mlcnc.models.output import ModelOutput
from mlcnc.recipes import IMAGENET_MEAN, IMAGENET_STD
from tiny_trained import IMAGE_SIZE, tiny_trained_run


class SmallNet(nn.Module):
    """A small conv net returning ModelOutput, like every mlcnc model."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, images: Tensor, return_attention: bool = False) -> ModelOutput:
        return ModelOutput(logits=self.fc(torch.relu(self.conv(images)).mean(dim=(2, 3))))


PRE = Preprocessing(32, 37, IMAGENET_MEAN, IMAGENET_STD)


def test_probability_model_wraps_model_output_and_plain_tensors():
    torch.manual_seed(0)
    net = SmallNet().eval()
    images = torch.randn(2, 3, 16, 16)
    expected = torch.sigmoid(net(images).logits)
    torch.testing.assert_close(ProbabilityModel(net)(images), expected)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    torch.testing.assert_close(ProbabilityModel(plain)(images), torch.sigmoid(plain(images)))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_round_trip_and_a_check_that_can_fail(fmt, tmp_path):
    torch.manual_seed(0)
    net = SmallNet().eval()
    metadata = export_metadata(["cat", "dog", "owl"], PRE, tmp_path / "model.ckpt")
    path = export_model(net, tmp_path / f"model.{fmt}", fmt, metadata, torch.randn(2, 3, 32, 32))
    assert read_metadata(path) == metadata
    assert json.loads(read_metadata(path)["class_names"]) == ["cat", "dog", "owl"]
    images = torch.randn(5, 3, 32, 32)  # another batch size than the traced one
    assert check_export(path, net, images) < 1e-5
    with torch.no_grad():
        net.fc.bias += 0.5  # PyTorch and the file now disagree
    with pytest.raises(ExportCheckError, match="differ from PyTorch by up to"):
        check_export(path, net, images)
    assert not list(tmp_path.glob(".*.tmp"))


def test_export_model_rejects_bad_requests(tmp_path):
    net = SmallNet()
    metadata = export_metadata(["a", "b", "c"], PRE)
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_model(net, tmp_path / "m", "tflite", metadata, torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"B >= 2"):
        export_model(net, tmp_path / "m.onnx", "onnx", metadata, torch.randn(1, 3, 8, 8))


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return tiny_trained_run(tmp_path_factory)


def real_batch(trained, paths):
    from mlcnc.data import read_image

    return torch.stack([trained.transform(read_image(p)) for p in paths])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_command_matches_pytorch_on_real_images(fmt, tiny_run, tmp_path, capsys):
    from mlcnc.engine import load_trained

    out = tmp_path / f"tiny.{fmt}"
    argv = ["export", str(tiny_run.run), "--format", fmt, "--out", str(out)]
    code = main([*argv, "--checkpoint", "last", "--ema"])
    assert code == 0
    printed = capsys.readouterr()
    assert "checking on 8 images from" in printed.err and "test.csv" in printed.err
    assert f"loaded {tiny_run.checkpoint}, EMA weights (as asked; " in printed.err
    assert f"wrote {out}" in printed.out

    metadata = read_metadata(out)
    assert json.loads(metadata["class_names"]) == list(tiny_run.class_names)
    preprocessing = json.loads(metadata["preprocessing"])
    assert preprocessing["image_size"] == IMAGE_SIZE
    assert preprocessing["mean"] == pytest.approx(IMAGENET_MEAN)
    assert preprocessing["std"] == pytest.approx(IMAGENET_STD)
    assert metadata["source_checkpoint"] == "last.ckpt"

    # Our own check, independent of the command's: real training images, batch of 3.
    trained = load_trained(tiny_run.checkpoint, use_ema=True)
    images = real_batch(trained, sorted((tiny_run.data / "images").glob("train_*.png"))[:3])
    with torch.no_grad():
        expected = torch.sigmoid(trained.model(images).logits).numpy()
    actual = run_exported(out, images)
    assert actual.shape == (3, len(tiny_run.class_names))
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_export_command_with_given_images_and_failures(tiny_run, tmp_path, capsys):
    out = tmp_path / "regular.pt"
    images = tiny_run.data / "images"
    argv = ["export", str(tiny_run.checkpoint), "--format", "torchscript", "--out", str(out)]
    assert main([*argv, "--images", str(images), "--check-count", "4", "--no-ema"]) == 0
    assert "checking on 4 images from the given images" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"junk")
    with pytest.raises(SystemExit, match="found 0 readable images"):
        main([*argv, "--images", str(bad), "--overwrite"])
