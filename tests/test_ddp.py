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

TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    import test_engine  # registers the tiny method
    from mlcnc.data import transforms
    from mlcnc.engine import train

    real = transforms.build_transforms
    # Deterministic training transform: both runs must see the same pixels.
    transforms.build_transforms = lambda recipe, size, train, **kw: real(recipe, size, False)
    data, out, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
    from pathlib import Path
    cfg = test_engine.tiny_config(
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
    from conftest import write_tiny_csv_dataset

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
