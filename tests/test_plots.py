"""Every figure is written as a valid, non-empty PNG; bad input gets an error naming the series."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mlcnc import plots

GROUPS = {"head": [0, 1], "medium": [2, 3], "tail": [4, 5]}
NAMES = ["person", "car", "dog", "cat", "cow", "sheep"]


def assert_png(path, min_size=(200, 150)):
    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        assert image.width >= min_size[0] and image.height >= min_size[1]
        # not a blank canvas: a plot has many distinct colours
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 10


def test_loss_terms(tmp_path):
    terms = {"total": [3.0, 2.0, 1.5, 1.2], "fla": [1.0, 0.8, 0.7, 0.6], "tw": [2, 1.2, 0.8, 0.6]}
    path = plots.plot_loss_terms(terms, tmp_path / "sub" / "loss.png", x=[10, 20, 30, 40])
    assert path == tmp_path / "sub" / "loss.png"
    assert_png(path)


def test_loss_terms_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match=r"loss term 'fla' has 2 values, expected 3"):
        plots.plot_loss_terms({"total": [1, 2, 3], "fla": [1, 2]}, tmp_path / "l.png")
    with pytest.raises(ValueError, match=r"x has 2 values, expected 3"):
        plots.plot_loss_terms({"total": [1, 2, 3]}, tmp_path / "l.png", x=[1, 2])
    with pytest.raises(ValueError, match="no loss terms"):
        plots.plot_loss_terms({}, tmp_path / "l.png")
    with pytest.raises(ValueError, match="PNG"):
        plots.plot_loss_terms({"total": [1, 2]}, tmp_path / "l.jpg")
    assert not (tmp_path / "l.png").exists()


def test_map_by_group_regular_and_ema(tmp_path):
    regular = {
        "total": [10, 20, 30],
        "head": [20, 30, 40],
        "medium": [5, 15, 25],
        "tail": [1, 5, 9],
    }
    ema = {k: [v - 1 for v in values] for k, values in regular.items()}
    assert_png(plots.plot_map_by_group([1, 2, 3], regular, tmp_path / "map.png", ema=ema))
    with pytest.raises(ValueError, match=r"mAP of 'tail' \(EMA\) has 2 values, expected 3"):
        plots.plot_map_by_group([1, 2, 3], regular, tmp_path / "m.png", ema={"tail": [1, 2]})


def test_ap_vs_frequency(tmp_path):
    ap = [0.9, 0.8, 0.6, np.nan, 0.3, 0.2]
    freq = [500, 300, 60, 40, 8, 3]
    path = plots.plot_ap_vs_frequency(ap, freq, tmp_path / "ap.png", NAMES, GROUPS)
    assert_png(path)
    with pytest.raises(ValueError, match="class_freq has 5 values, expected 6"):
        plots.plot_ap_vs_frequency(ap, freq[:5], tmp_path / "a.png")
    with pytest.raises(ValueError, match="5 class names for 6 classes"):
        plots.plot_ap_vs_frequency(ap, freq, tmp_path / "a.png", NAMES[:5])
    with pytest.raises(ValueError, match=r"classes \[5\] have no training positive"):
        plots.plot_ap_vs_frequency(ap, [*freq[:5], 0], tmp_path / "a.png")
    with pytest.raises(ValueError, match="group 'tail' holds class index 7"):
        plots.plot_ap_vs_frequency(ap, freq, tmp_path / "a.png", groups={"tail": [7]})


def test_neural_collapse_history(tmp_path):
    history = {
        "nc1": [5.0, 1.0, 0.2],
        "nc2_equinorm": [0.3, 0.2, 0.1],
        "nc2_cos_mean_dev": [0.4, 0.2, 0.1],
        "nc3": [None, 0.5, 0.3],
    }
    assert_png(plots.plot_neural_collapse([0, 1, 2], history, tmp_path / "nc.png"))
    with pytest.raises(ValueError, match=r"diagnostic 'nc1' has 2 values, expected 3"):
        plots.plot_neural_collapse([0, 1, 2], {"nc1": [1, 2]}, tmp_path / "n.png")


def test_cosine_heatmap_with_excluded_class(tmp_path):
    num_classes = 6
    cosine = np.full((num_classes, num_classes), -1 / (num_classes - 1))
    np.fill_diagonal(cosine, 1.0)
    cosine[0, 1] = cosine[1, 0] = 0.2
    cosine[5, :] = cosine[:, 5] = np.nan
    assert_png(plots.plot_cosine_heatmap(cosine, tmp_path / "cos.png", NAMES))
    with pytest.raises(ValueError, match="square"):
        plots.plot_cosine_heatmap(np.zeros((3, 4)), tmp_path / "c.png")


def test_class_frequency(tmp_path):
    path = plots.plot_class_frequency(
        [3, 500, 60, 40, 8, 300], tmp_path / "freq.png", NAMES, GROUPS
    )
    assert_png(path)
    with pytest.raises(ValueError, match="5 class names for 6 classes"):
        plots.plot_class_frequency([1] * 6, tmp_path / "f.png", NAMES[:5])


def test_benchmark_table(tmp_path):
    means = {
        "erm": {"total": 70.9, "head": 74.6, "medium": 76.2, "tail": 64.1},
        "mlcnc": {"total": 84.4, "head": 72.8, "medium": 88.2, "tail": 90.3},
    }
    stds = {m: {g: 0.5 for g in v} for m, v in means.items()}
    assert_png(plots.plot_benchmark(means, tmp_path / "bench.png", stds=stds))
    bad = {"erm": means["erm"], "db": {"total": 1.0, "head": 2.0}}
    with pytest.raises(ValueError, match="method 'db' has groups"):
        plots.plot_benchmark(bad, tmp_path / "b.png")
    with pytest.raises(ValueError, match="stds of method 'mlcnc'"):
        plots.plot_benchmark(means, tmp_path / "b.png", stds={"erm": stds["erm"]})


def test_loss_on_a_log_scale_with_the_warmup_end_and_the_legend_outside(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: saved.append(figure) or path)
    terms = {"total": [0.4, 6.0, 5.9], "fla": [0.4, 0.38, 0.37], "tw": [0.0, 5.5, 5.4]}
    plots.plot_loss_terms(terms, tmp_path / "l.png", x=[1, 2, 3], x_label="epoch", warmup_end=1)
    axes = saved[0].axes[0]
    assert axes.get_yscale() == "log"  # the warm-up's 0 (a term not computed) is left out
    assert any(list(line.get_xdata()) == [1, 1] for line in axes.get_lines())  # warm-up end
    assert axes.get_legend() is None and len(saved[0].legends) == 1  # beside, not on the data
    plots.plot_map_by_group(
        [1, 2, 3],
        {"total": [40, 50, 55]},
        tmp_path / "m.png",
        selection=("val/map_total", [np.nan, 52.0, 53.0]),
    )
    labels = [line.get_label() for line in saved[1].axes[0].get_lines()]
    assert "val/map_total (selects)" in labels and saved[1].axes[0].get_legend() is None
