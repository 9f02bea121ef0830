"""The Table 1 rows added to the registry train end to end through the engine (tiny data)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from helpers import tiny_data_overrides
from mlcnc.config import load_config
from mlcnc.methods import METHODS, table_order

NEW_ROWS = ("mlgcn", "bbn", "urs", "mfm")


def test_new_rows_are_registered_in_table_order() -> None:
    order = table_order(METHODS.names())
    assert all(name in order for name in NEW_ROWS)
    assert order.index("erm") < order.index("bbn") < order.index("mlcnc")
    # OLTR after ML-GCN as in the DB paper's table; LDAM-DRW beside LDAM (no DRW).
    assert order.index("mlgcn") < order.index("oltr") < order.index("bbn")
    assert order.index("ldam") + 1 == order.index("ldam_drw")
    assert METHODS.get("oltr").sampler == "class_aware"
    assert METHODS.get("bbn").sampler == "paired_reversed"
    assert METHODS.get("urs").sampler == "paired_class_aware"


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_ROWS)
def test_new_row_trains_and_evaluates(name: str, tiny_csv_dataset: Path, tmp_path: Path) -> None:
    from mlcnc.engine import evaluate_checkpoint, train

    data = tiny_csv_dataset
    cfg = load_config(
        "csv",
        [
            *tiny_data_overrides(data),
            f"method.name={name}",
            "method.backbone=resnet18",
            "method.pretrained=false",
            "optim.epochs=1",
            "optim.batch_size=4",
            "train.limit_train_batches=1",
            "train.accelerator=cpu",
            "train.precision=32-true",
            "train.progress=false",
            "train.plots=false",
            f"train.output={tmp_path / 'run'}",
        ],
    )
    result = train(cfg)
    assert [r["epoch"] for r in result.history] == [1]
    assert math.isfinite(result.last["loss/total"])
    assert 0.0 <= result.last["test/map_total"] <= 100.0
    # The checkpoint alone rebuilds the model (co-occurrence statistics are buffers).
    report = evaluate_checkpoint(tmp_path / "run")
    assert report["models"]["regular"]["map"]["total"] == pytest.approx(
        result.last["test/map_total"], abs=1e-6
    )


def builtin_methods() -> list[str]:
    """The names ``mlcnc.methods`` registers (not the test method of ``tests/helpers.py``)."""
    return [
        name
        for name in METHODS.registered()
        if METHODS.get(name).build.__module__.startswith("mlcnc.methods.")
    ]


def test_docs_list_exactly_the_registered_methods() -> None:
    import re

    from mlcnc.methods import method_table

    root = Path(__file__).resolve().parents[2]
    names = builtin_methods()
    reference = (root / "docs" / "baselines_reference.md").read_text()
    assert "\n".join(method_table(names)) in reference
    readme = (root / "README.md").read_text()
    start = readme.index("| name | method | source |")
    table = readme[start : readme.index("\n\n", start)]
    cells = [row.split("|")[1] for row in table.splitlines()[2:]]
    listed = [n for cell in cells for n in re.findall(r"`([a-z0-9_]+)`", cell)]
    assert sorted(listed) == sorted(names)
    assert len(method_table(names)) == len(names) + 2
