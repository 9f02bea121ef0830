"""Two processes on CPU (gloo, launched by torchrun) against one process, same global batch.

The tiny method without BatchNorm or dropout and with deterministic transforms makes the
two runs compute the same global batches, so the weights, the losses, the criterion's
all-reduced buffer and the metrics (gathered over ranks, padding dropped) must agree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import write_tiny_csv_dataset

TESTS = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import helpers
    helpers.register_tiny_method()
    from mlcnc.data import transforms
    from mlcnc.engine import train

    real = transforms.build_transforms
    # Deterministic training transform: both runs must see the same pixels.
    transforms.build_transforms = lambda recipe, size, train, **kw: real(recipe, size, False)
    data, out, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
    from pathlib import Path
    cfg = helpers.tiny_config(
        Path(data), Path(out),
        "method.model.norm=false", "method.model.dropout=0.0",
        "optim.batch_size=8", "train.eval_every=1",
        f"train.devices={{devices}}", "train.strategy=" + ("ddp" if devices > 1 else "auto"),
    )
    result = train(cfg)
    if result.global_rank == 0:
        Path(out, "result.json").write_text(json.dumps(result.last))
    """
)


def _run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    if shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists():
        pytest.skip("torchrun not found")

    data = write_tiny_csv_dataset(tmp_path / "data")
    # 24 training images (3 global batches of 8, no sampler padding); 7 test images, so the
    # 2-rank evaluation pads one image that must be dropped before AP.
    for name, keep in (("train.csv", 25), ("test.csv", 8)):
        lines = (data / name).read_text().splitlines()
        (data / name).write_text("\n".join(lines[:keep]) + "\n")
    script = tmp_path / "run_tiny.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    _run([sys.executable, str(script), str(data), str(tmp_path / "one"), "1"], tmp_path)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    _run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(data),
            str(tmp_path / "two"),
            "2",
        ],
        tmp_path,
    )
    one = json.loads((tmp_path / "one" / "result.json").read_text())
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert one["step"] == two["step"] == 3 * 3
    assert two["loss/total"] == pytest.approx(one["loss/total"], rel=1e-5)
    for key, value in one.items():
        if "/map_" in key or key.endswith("F1"):
            assert two[key] == pytest.approx(value, abs=1e-3), key
    a = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5)
    # The criterion's epoch sums were all-reduced: each epoch counts all 24 images' labels.
    assert torch.equal(a["criterion"]["seen_counts"], b["criterion"]["seen_counts"])
    assert a["criterion"]["seen_counts"].tolist() == [3 * 17, 3 * 8, 3 * 4, 3 * 2]


MLCNC_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from mlcnc.config import load_config
    from mlcnc.engine import train

    data, out, devices = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    cfg = load_config("csv", [
        f"data.train_csv={{data / 'train.csv'}}", f"data.test_csv={{data / 'test.csv'}}",
        "data.image_size=32", "data.num_workers=0", "data.augment=false",
        "data.epoch_length=48", "data.head_threshold=10", "data.tail_threshold=4",
        "method.name=mlcnc", "method.backbone=test_convnext", "method.pretrained=false",
        "method.model={{embed_dim: 16, num_heads: 2, proj_dim: 4, attn_dropout: 0.0}}",
        "method.loss.warmup_epochs=1", "optim.epochs=3", "optim.batch_size=8",
        "optim.optimizer=sgd", "optim.schedule=constant", "optim.lr=0.01",
        "train.accelerator=cpu", "train.precision=32-true",
        "train.progress=false", "train.plots=false", f"train.output={{out}}",
        f"train.devices={{devices}}", "train.strategy=" + ("ddp" if devices > 1 else "auto"),
    ])
    result = train(cfg)
    if result.global_rank == 0:
        Path(out, "history.json").write_text(json.dumps(result.history))
    """
)


@pytest.mark.slow
def test_mlcnc_on_two_processes_matches_one_process_epoch_by_epoch(tmp_path: Path) -> None:
    """The real criterion (two-way per-class log-sum-exp over the batch, FPC's mean over
    positive pairs, prototypes) on the real MLC-NC model: a LayerNorm backbone (timm's
    test_convnext, no batch statistics), no dropout, augmentation off, so both runs compute
    the same function on the same global batches. SGD, so that the weights compare as
    closely as the gradients do (Adam's normalisation turns last-bit differences of
    near-zero gradients into steps of size lr). Before the global-batch reductions the
    two-process losses were about 25% lower."""
    if shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists():
        pytest.skip("torchrun not found")

    data = write_tiny_csv_dataset(tmp_path / "data")
    script = tmp_path / "run_mlcnc.py"
    script.write_text(MLCNC_SCRIPT.format())
    _run([sys.executable, str(script), str(data), str(tmp_path / "one"), "1"], tmp_path)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    _run([torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(data),
          str(tmp_path / "two"), "2"], tmp_path)  # fmt: skip
    one = json.loads((tmp_path / "one" / "history.json").read_text())
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    assert [r["epoch"] for r in one] == [r["epoch"] for r in two] == [1, 2, 3]
    worst = 0.0
    for a, b in zip(one, two, strict=True):
        for key in ("loss/total", "loss/fla", "loss/fpc", "loss/tw"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["epoch"], key)
            worst = max(worst, abs(b[key] - a[key]) / max(abs(a[key]), 1e-12))
    assert one[-1]["loss/fpc"] > 0 and one[-1]["loss/tw"] > 0  # past the warm-up, prototypes set
    a = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    weight_diff = max(
        (b["model"][k].double() - v.double()).abs().max().item()
        for k, v in a["model"].items()
        if v.is_floating_point()
    )
    print(
        f"largest relative loss difference {worst:.2e}; largest weight difference {weight_diff:.2e}"
    )
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b["criterion"]["prototypes"], a["criterion"]["prototypes"])


PAIRED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from mlcnc.config import load_config
    from mlcnc.engine import train

    data, out, devices, method = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    cfg = load_config("csv", [
        f"data.train_csv={{data / 'train.csv'}}", f"data.test_csv={{data / 'test.csv'}}",
        "data.image_size=32", "data.num_workers=0", "data.augment=false",
        "data.epoch_length=48", "data.head_threshold=10", "data.tail_threshold=4",
        f"method.name={{method}}", "method.backbone=test_efficientnet_gn",
        "method.pretrained=false", "optim.epochs=3", "optim.batch_size=8",
        "optim.optimizer=sgd", "optim.schedule=constant", "optim.lr=0.05",
        "train.accelerator=cpu", "train.precision=32-true", "train.ema_decay=0.0",
        "train.num_threads=1",
        "train.progress=false", "train.plots=false", f"train.output={{out}}",
        f"train.devices={{devices}}", "train.strategy=" + ("ddp" if devices > 1 else "auto"),
    ])
    result = train(cfg)
    if result.global_rank == 0:
        Path(out, "history.json").write_text(json.dumps(result.history))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["bbn", "urs"])
def test_paired_methods_on_two_processes_match_one_process(method: str, tmp_path: Path) -> None:
    """BBN and URS end to end: paired samplers sharded over the ranks, BBN's alpha set on
    every rank, both branches, the criterion's means over the global batch. GroupNorm
    backbone (timm's test_efficientnet_gn, no batch statistics), augmentation off, SGD: the
    two runs compute the same function on the same global batches of pairs. The shards are
    equal here (6 batches of 4 + 4 pairs); unequal shards, where a per-process mean goes
    wrong, are tests/test_ddp_losses.py's."""
    if shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists():
        pytest.skip("torchrun not found")

    data = write_tiny_csv_dataset(tmp_path / "data")
    script = tmp_path / "run_paired.py"
    script.write_text(PAIRED_SCRIPT.format())
    _run([sys.executable, str(script), str(data), str(tmp_path / "one"), "1", method], tmp_path)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    _run([torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(data),
          str(tmp_path / "two"), "2", method], tmp_path)  # fmt: skip
    one = json.loads((tmp_path / "one" / "history.json").read_text())
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    assert [r["epoch"] for r in one] == [r["epoch"] for r in two] == [1, 2, 3]
    terms = sorted(k for k in one[0] if k.startswith("loss/"))
    assert len(terms) >= 3  # the total and the method's own terms
    worst = max(
        abs(b[key] - a[key]) / max(abs(a[key]), 1e-12)
        for a, b in zip(one, two, strict=True)
        for key in terms
    )
    a = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    weight_diff = max(
        (b["model"][k].double() - v.double()).abs().max().item()
        for k, v in a["model"].items()
        if v.is_floating_point()
    )
    print(f"{method}: largest relative loss difference {worst:.2e}, weights {weight_diff:.2e}")
    for x, y in zip(one, two, strict=True):
        for key in terms:
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), (x["epoch"], key)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5)
