"""``mlcnc inspect``: the neural-collapse report on a tiny trained checkpoint, its numbers
checked against ``mlcnc.metrics`` computed here from the model's own outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mlcnc import metrics
from mlcnc.analysis.collapse import markdown_report
from mlcnc.analysis.preprocessing import preprocessing_of
from mlcnc.cli import main
from tiny_trained import tiny_trained_run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return tiny_trained_run(tmp_path_factory)


def reference_outputs(checkpoint, csv_path, use_ema=True):
    """Probabilities, targets and projections of the model on a CSV split, image by image."""
    from mlcnc.data import read_csv_split, read_image
    from mlcnc.engine import load_trained

    trained = load_trained(checkpoint, use_ema=use_ema)
    split = read_csv_split(csv_path, class_names=trained.class_names)
    scores, projections = [], []
    with torch.no_grad():
        for path in split.image_paths:
            output = trained.model(trained.transform(read_image(path))[None])
            scores.append(torch.sigmoid(output.logits)[0].numpy())
            projections.append(output.projections[0].numpy())
    return trained, split.labels, np.stack(scores), np.stack(projections)


@pytest.mark.slow
def test_inspect_report_numbers_match_metrics(tiny_run, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["inspect", str(tiny_run.run), "--split", "test", "--out", str(out)]
    code = main([*argv, "--checkpoint", "last", "--ema"])
    assert code == 0
    assert "nc1" in capsys.readouterr().out
    for name in (
        "cosine_class_means.png",
        "cosine_classifier.png",
        "ap_vs_frequency.png",
        "class_frequency.png",
    ):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 200
    result = json.loads((out / "collapse.json").read_text())

    trained, targets, scores, projections = reference_outputs(
        tiny_run.checkpoint, tiny_run.data / "test.csv"
    )
    classifier = trained.model.head.classifier.detach()
    expected = metrics.neural_collapse(projections, targets, classifier)
    for key in ("nc1", "nc2_equinorm", "nc2_cos_mean_dev", "nc2_cos_max_dev", "nc3"):
        assert result["collapse"][key] == pytest.approx(expected[key], rel=1e-3, abs=1e-5), key
    ap = metrics.average_precision(scores, targets)
    reported_ap = [c["ap"] for c in result["per_class"]]
    np.testing.assert_allclose(reported_ap, 100 * ap, atol=1e-3)
    assert result["weights"] == "EMA" and result["num_images"] == 8
    assert [c["train_positives"] for c in result["per_class"]] == list(trained.class_freq)
    # the fixed ETF classifier of the paper recipe is an exact simplex ETF
    assert result["classifier"]["cos_max_dev"] < 1e-5
    assert result["classifier"]["shape"] == [4 * 4, 4]

    report = (out / "report.md").read_text()
    assert f"| NC1 | {result['collapse']['nc1']:.4f} |" in report
    assert "![Pairwise cosines of class means](cosine_class_means.png)" in report


@pytest.mark.slow
def test_inspect_on_a_csv_file_and_regular_weights(tiny_run, tmp_path):
    # A CSV of our own in which "star" has a single positive: left out of NC, and said so.
    images = tiny_run.data / "images"
    rows = ["circle", "square", "triangle", "circle;square", "circle;triangle", "square;star"]
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text(
        "image,labels\n"
        + "".join(f"{images / f'val_{i:03d}.png'},{labels}\n" for i, labels in enumerate(rows))
    )
    out = tmp_path / "mine_report"
    argv = ["inspect", str(tiny_run.checkpoint), "--split", str(csv_path), "--out", str(out)]
    assert main([*argv, "--no-ema"]) == 0
    result = json.loads((out / "collapse.json").read_text())
    assert result["weights"] == "regular" and result["data"] == str(csv_path)
    _, targets, _, projections = reference_outputs(tiny_run.checkpoint, csv_path, use_ema=False)
    with pytest.warns(RuntimeWarning, match=r"leave out classes \[3\]"):
        expected = metrics.neural_collapse(projections, targets)
    assert result["collapse"]["nc1"] == pytest.approx(expected["nc1"], rel=1e-3, abs=1e-5)
    assert result["collapse"]["excluded_classes"] == ["star"]
    assert result["collapse"]["classes_used"] == 3
    assert "Left out (fewer than 2 positives): star." in (out / "report.md").read_text()


@pytest.mark.slow
def test_inspect_default_folder_and_bad_data(tiny_run, capsys):
    assert main(["inspect", str(tiny_run.run), "--split", "val"]) == 0
    assert (tiny_run.run / "inspect-val" / "report.md").is_file()
    with pytest.raises(SystemExit, match=r"has no 'holdout' split \(it has test, train, val\)"):
        main(["inspect", str(tiny_run.run), "--split", "holdout"])
    capsys.readouterr()
    assert main(["inspect", str(tiny_run.run), "no_such_key=1"]) == 2
    assert "unknown config key 'data.no_such_key'" in capsys.readouterr().err


def test_markdown_report_without_projections():
    result = {
        "checkpoint": "x.ckpt",
        "weights": "regular",
        "data": "test.csv",
        "num_images": 3,
        "map": {"total": 50.0, "head": float("nan")},
        "collapse": None,
        "classifier": None,
        "no_train_positives": ["zebra"],
        "figures": {"ap_vs_frequency": "ap_vs_frequency.png"},
    }
    report = markdown_report(result)
    assert "| 50.00 | n/a |" in report
    assert "no per-class projections" in report
    assert "zebra" in report and "![Per-class AP against training frequency]" in report


def test_preprocessing_is_read_from_the_transform():
    from mlcnc.data.transforms import build_transforms
    from mlcnc.recipes import INATURALIST_MEAN, INATURALIST_STD

    pre = preprocessing_of(build_transforms("official", 96, train=False), 96)
    assert pre.mean == pytest.approx(INATURALIST_MEAN) and pre.std == pytest.approx(INATURALIST_STD)
    assert (pre.image_size, pre.resize_size) == (96, 110)
    images = torch.rand(2, 3, 8, 8)
    normalised = (images - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(
        1, 3, 1, 1
    )
    restored = pre.denormalize(normalised)
    assert restored.dtype == torch.uint8
    assert (restored.float() - images * 255).abs().max() <= 0.51
    with pytest.raises(ValueError, match="expected one torchvision v2 Normalize"):
        preprocessing_of(build_transforms("paper", 96, train=False).transforms[0], 96)
