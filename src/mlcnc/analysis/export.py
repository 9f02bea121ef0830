"""Ship a trained model: ONNX or TorchScript, with its class names and preprocessing inside.

The exported module takes a normalised float32 image batch (B, 3, H, W) -- the output of
the model's evaluation transform, see ``Preprocessing`` -- and returns per-class
probabilities (B, C). Metadata: ONNX ``metadata_props`` and the TorchScript extra file
``mlcnc.json`` hold the same keys (``class_names``, ``preprocessing`` as JSON strings, plus
``input``, ``output``, ``mlcnc_version``, ``source_checkpoint``).

``check_export`` runs the exported file (onnxruntime, or the loaded TorchScript module) and
the PyTorch model on the same inputs and fails if any probability differs by more than the
tolerance (1e-4 by default).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mlcnc.analysis.preprocessing import Preprocessing
from mlcnc.io import temporary_name

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
METADATA_FILE = "mlcnc.json"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


class ExportCheckError(RuntimeError):
    """The exported model's outputs differ from PyTorch's beyond the tolerance."""


class ProbabilityModel(nn.Module):
    """Wraps an mlcnc model: normalised images (B, 3, H, W) -> probabilities (B, C) float32."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        output = self.model(images)
        logits = output if isinstance(output, Tensor) else output.logits
        return torch.sigmoid(logits.float())


def inference_view(model: nn.Module) -> nn.Module:
    """What is exported of ``model``: its ``inference_module()`` when it has one (a model whose
    text tower only makes fixed label embeddings exports without that tower), else itself."""
    make = getattr(model, "inference_module", None)
    return make() if callable(make) else model


def export_metadata(
    class_names: Sequence[str], preprocessing: Preprocessing, source: str | Path = ""
) -> dict[str, str]:
    """String metadata (ONNX metadata_props hold strings) describing input and output."""
    from mlcnc import __version__

    size = preprocessing.image_size
    if preprocessing.crop:
        geometry = f"short side resized to {preprocessing.resize_size}, center-cropped"
    else:
        geometry = f"resized to {size} x {size} (aspect not kept, not cropped)"
    return {
        "class_names": json.dumps(list(class_names)),
        "preprocessing": json.dumps(preprocessing.as_dict()),
        "input": f"{INPUT_NAME}: float32 (B, 3, {size}, {size}), RGB, {geometry}, scaled to "
        "[0, 1], normalised with mean and std",
        "output": f"{OUTPUT_NAME}: float32 (B, C), per-class sigmoid probabilities",
        "mlcnc_version": __version__,
        "source_checkpoint": Path(source).name,
    }


def export_model(
    model: nn.Module,
    path: str | Path,
    fmt: str,
    metadata: dict[str, str],
    example: Tensor,
) -> Path:
    """Write ``model`` (its ``inference_view``) wrapped in ``ProbabilityModel`` as ``fmt`` to
    ``path`` with a dynamic batch axis; ``example`` is a (B, 3, H, W) batch used for tracing
    (B >= 2)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if example.ndim != 4 or example.shape[0] < 2:
        raise ValueError(f"example must be a (B >= 2, 3, H, W) batch, got {tuple(example.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval().cpu()
    with torch.no_grad():
        wrapper = ProbabilityModel(inference_view(model)).eval()
    example = example.detach().float().cpu()
    tmp = temporary_name(path)  # per process; renamed into place when complete
    try:
        if fmt == "onnx":
            _export_onnx(wrapper, tmp, metadata, example)
        else:
            _export_torchscript(wrapper, tmp, metadata, example)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _export_onnx(wrapper: nn.Module, path: Path, metadata: dict[str, str], example: Tensor) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: batch}},
            verbose=False,
        )
    program.save(str(path))
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _export_torchscript(
    wrapper: nn.Module, path: Path, metadata: dict[str, str], example: Tensor
) -> None:
    with warnings.catch_warnings():
        # torch.jit.trace is deprecated in favour of torch.export, and warns about shape
        # arithmetic it records; the exported module is checked numerically afterwards.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(metadata)})


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an exported file (``.onnx`` or TorchScript)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        return {entry.key: entry.value for entry in proto.metadata_props}
    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[METADATA_FILE]:
        raise ValueError(f"{path}: no {METADATA_FILE} metadata (not an mlcnc export)")
    return json.loads(extra[METADATA_FILE])


def run_exported(path: str | Path, images: Tensor) -> np.ndarray:
    """Probabilities (B, C) from an exported file on a normalised batch (B, 3, H, W)."""
    path = Path(path)
    batch = images.detach().float().cpu()
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(batch).numpy()


def check_export(path: str | Path, model: nn.Module, images: Tensor, atol: float = 1e-4) -> float:
    """Max |exported - PyTorch| probability on ``images``; ExportCheckError above ``atol``."""
    wrapper = ProbabilityModel(model).eval().cpu()
    with torch.no_grad():
        expected = wrapper(images.detach().float().cpu()).numpy()
    actual = run_exported(path, images)
    if actual.shape != expected.shape:
        raise ExportCheckError(
            f"{path}: output shape {actual.shape} differs from PyTorch's {expected.shape}"
        )
    difference = float(np.max(np.abs(actual - expected)))
    if not difference <= atol:
        raise ExportCheckError(
            f"{path}: probabilities differ from PyTorch by up to {difference:.2e} "
            f"(tolerance {atol:.0e}) on {images.shape[0]} images"
        )
    return difference
