"""Prediction: class selection, file discovery, writers, the streaming loop (with unreadable
files), attention overlays, and ``mlcnc predict`` on a tiny trained checkpoint."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from mlcnc.analysis.attention import ContactSheet, attention_overlay
from mlcnc.analysis.predict import (
    ImagePrediction,
    PredictionWriter,
    find_images,
    predict_images,
    select_classes,
)
from mlcnc.analysis.preprocessing import preprocessing_of
from mlcnc.cli import main
from mlcnc.data.transforms import build_transforms
from mlcnc.models.output import ModelOutput
from tiny_trained import tiny_trained_run

NAMES = ["a", "b", "c", "d"]


# ---------------------------------------------------------------- selection and files


def test_select_classes_threshold_and_top_k_match_loops():
    rng = np.random.default_rng(0)
    probabilities = rng.random((6, 5))
    for threshold in (0.2, 0.5, 0.9):
        chosen = select_classes(probabilities, threshold=threshold)
        for row, classes in zip(probabilities, chosen, strict=True):
            expected = sorted((c for c in range(5) if row[c] >= threshold), key=lambda c: -row[c])
            assert classes.tolist() == expected
    top = select_classes(probabilities, threshold=None, top_k=2)
    for row, classes in zip(probabilities, top, strict=True):
        assert classes.tolist() == list(np.argsort(-row)[:2])
    with pytest.raises(ValueError, match="exactly one"):
        select_classes(probabilities, threshold=0.5, top_k=2)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        select_classes(probabilities, threshold=None, top_k=0)


def test_find_images_recurses_filters_and_deduplicates(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "sub/c.webp", "sub/deeper/d.jpeg", "notes.txt", "sub/x.csv"):
        (tmp_path / name).write_bytes(b"x")
    explicit = tmp_path / "notes.txt"  # named explicitly: read whatever its suffix
    found = find_images([tmp_path, explicit, tmp_path / "b.png"])
    names = [p.relative_to(tmp_path).as_posix() for p in found]
    assert names == ["a.JPG", "b.png", "sub/c.webp", "sub/deeper/d.jpeg", "notes.txt"]
    with pytest.raises(FileNotFoundError, match=r"missing\.png: no such image"):
        find_images([tmp_path / "missing.png"])


def test_writers_produce_parseable_json_and_csv(tmp_path):
    predictions = [
        ImagePrediction(tmp_path / "x.png", np.array([0.9, 0.1, 0.6, 0.2]), np.array([0, 2])),
        ImagePrediction(tmp_path / "y.png", np.array([0.1, 0.2, 0.3, 0.4]), np.array([], int)),
    ]
    stream = io.StringIO()
    writer = PredictionWriter(stream, "json", NAMES, all_scores=True)
    for prediction in predictions:
        writer.write(prediction)
    writer.close()
    records = json.loads(stream.getvalue())
    assert records[0] == {
        "image": str(tmp_path / "x.png"),
        "labels": ["a", "c"],
        "scores": [0.9, 0.6],
        "probabilities": {"a": 0.9, "b": 0.1, "c": 0.6, "d": 0.2},
    }
    assert records[1]["labels"] == [] and records[1]["scores"] == []

    empty = io.StringIO()
    PredictionWriter(empty, "json", NAMES).close()
    assert json.loads(empty.getvalue()) == []

    stream = io.StringIO()
    writer = PredictionWriter(stream, "csv", NAMES)
    for prediction in predictions:
        writer.write(prediction)
    writer.close()
    rows = list(csv.reader(io.StringIO(stream.getvalue())))
    assert rows[0] == ["image", "labels", "scores"]
    assert rows[1] == [str(tmp_path / "x.png"), "a;c", "0.900000;0.600000"]
    assert rows[2][1:] == ["", ""]
    with pytest.raises(ValueError, match="unknown output format 'xml'"):
        PredictionWriter(io.StringIO(), "xml", NAMES)


# ---------------------------------------------------------------- the streaming loop


class GridAttentionModel(nn.Module):
    """A deterministic stand-in for MLC-NC: a 2x2 token grid of mean colours; class c's
    logit reads channel c % 3 and its attention favours token c."""

    num_classes = 4

    def forward(self, images: Tensor, return_attention: bool = False) -> ModelOutput:
        tokens = F.adaptive_avg_pool2d(images, 2).flatten(2)  # (B, 3, 4)
        logits = tokens.mean(dim=2)[:, [0, 1, 2, 0]] * torch.tensor([1.0, 2.0, -1.0, 0.5])
        attention = None
        if return_attention:
            attention = torch.full((len(images), 4, 4), 0.1)
            attention[:, torch.arange(4), torch.arange(4)] = 0.7
        return ModelOutput(
            logits=logits, attention=attention, attention_hw=(2, 2) if return_attention else None
        )


class NoAttentionModel(GridAttentionModel):
    def forward(self, images: Tensor, return_attention: bool = False) -> ModelOutput:
        return ModelOutput(logits=super().forward(images).logits)


def write_images(folder, count, size=40, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_predict_images_streams_in_order_and_reports_bad_files(tmp_path):
    paths = write_images(tmp_path, 5)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    inputs = [paths[0], corrupt, paths[1], paths[2], empty, paths[3], paths[4]]
    transform = build_transforms("paper", 32, train=False)
    model = GridAttentionModel()
    done = []
    results = list(
        predict_images(
            model,
            inputs,
            transform,
            threshold=0.5,
            batch_size=3,
            preprocessing=preprocessing_of(transform, 32),
            with_attention=True,
            keep_images=True,
            progress=done.append,
        )
    )
    assert [r.path for r in results] == inputs
    assert done == [3, 3, 1]
    assert [r.error is not None for r in results] == [False, True, False, False, True, False, False]
    assert "corrupt.png" in results[1].error and "empty.jpg" in results[4].error
    for result in (r for r in results if r.error is None):
        image = transform(torch.from_numpy(np.array(Image.open(result.path))).permute(2, 0, 1))
        expected = torch.sigmoid(model(image[None]).logits)[0].numpy()
        np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
        assert result.classes.tolist() == [c for c in np.argsort(-expected) if expected[c] >= 0.5]
        assert result.attention.shape == (len(result.classes), 2, 2)
        assert result.image.shape == (3, 32, 32) and result.image.dtype == np.uint8


def test_predict_images_refuses_attention_from_a_model_without_it(tmp_path):
    paths = write_images(tmp_path, 2)
    transform = build_transforms("paper", 32, train=False)
    with pytest.raises(ValueError, match="NoAttentionModel gives no attention maps"):
        list(predict_images(NoAttentionModel(), paths, transform, with_attention=True))


def test_denormalised_crop_matches_the_resized_crop(tmp_path):
    (path,) = write_images(tmp_path, 1, size=32)
    transform = build_transforms("paper", 32, train=False)
    (result,) = predict_images(
        GridAttentionModel(),
        [path],
        transform,
        preprocessing=preprocessing_of(transform, 32),
        keep_images=True,
    )
    pixels = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)
    # the crop without normalisation: resize to 37 then centre-crop 32
    from torchvision.transforms import v2

    expected = v2.CenterCrop(32)(v2.Resize(37, antialias=True)(pixels)).numpy()
    assert np.abs(result.image.astype(int) - expected.astype(int)).max() <= 1


def test_attention_overlay_is_hot_where_the_map_is():
    image = np.full((3, 64, 64), 128, dtype=np.uint8)
    attention = np.zeros((2, 2), dtype=np.float32)
    attention[1, 0] = 1.0  # bottom-left token
    overlay = attention_overlay(image, attention).astype(int)
    assert overlay.shape == (64, 64, 3)
    hot, cold = overlay[48, 16], overlay[16, 48]
    assert hot[0] > cold[0] + 50 and cold[2] > hot[2]  # red where attended, blue elsewhere
    with pytest.raises(ValueError, match=r"image must be \(3, H, W\)"):
        attention_overlay(image[0], attention)


def test_contact_sheet_layout(tmp_path):
    sheet = ContactSheet(tile=40, max_rows=2)
    image = np.zeros((3, 32, 32), dtype=np.uint8)
    for i, count in enumerate((2, 3, 1)):
        sheet.add(
            ImagePrediction(
                tmp_path / f"{i}.png",
                probabilities=np.array([0.9, 0.8, 0.7, 0.1]),
                classes=np.arange(count),
                attention=np.random.default_rng(i).random((count, 2, 2)),
                image=image,
            ),
            NAMES,
        )
    path = sheet.save(tmp_path / "sheet.png")
    with Image.open(path) as saved:
        assert saved.width == 4 * 40  # widest row: the image and 3 overlays
        assert saved.height > 2 * 40
    assert sheet.left_out == 1


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return tiny_trained_run(tmp_path_factory)


@pytest.mark.slow
def test_predict_command_json_with_attention(tiny_run, tmp_path, capsys):
    from mlcnc.engine import load_trained

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "pred.json"
    attention_dir = tmp_path / "attention"
    test_images = sorted((tiny_run.data / "images").glob("test_*.png"))
    code = main(
        [
            "predict",
            str(tiny_run.run),
            *map(str, test_images[:3]),
            str(bad),
            *map(str, test_images[3:]),
            "--threshold",
            "0.3",
            "--all-scores",
            "--output",
            str(out),
            "--attention",
            str(attention_dir),
            "--batch-size",
            "3",
            "--no-progress",
        ]
    )
    assert code == 0
    stderr = capsys.readouterr().err
    assert "broken.jpg" in stderr and "skipped 1 unreadable" in stderr
    # A run folder: the checkpoint the run selected (it has a val split: best.ckpt).
    assert f"loaded {tiny_run.run / 'checkpoints' / 'best.ckpt'}, " in stderr
    assert "weights (selected on val" in stderr
    records = json.loads(out.read_text())
    assert [r["image"] for r in records] == [str(p) for p in test_images]

    trained = load_trained(tiny_run.run)  # the run's selected weights, as the command uses
    images = torch.stack([trained.transform(_read(p)) for p in test_images])
    with torch.no_grad():
        expected = torch.sigmoid(trained.model(images).logits).numpy()
    for record, row in zip(records, expected, strict=True):
        assert list(record["probabilities"]) == list(tiny_run.class_names)
        np.testing.assert_allclose(list(record["probabilities"].values()), row, atol=1e-5)
        chosen = [c for c in np.argsort(-row) if row[c] >= 0.3]
        assert record["labels"] == [tiny_run.class_names[c] for c in chosen]
        assert record["scores"] == sorted(record["scores"], reverse=True)

    folders = sorted(p for p in attention_dir.iterdir() if p.is_dir())
    assert len(folders) == len(test_images)
    for folder, record in zip(folders, records, strict=True):
        pngs = sorted(folder.glob("*.png"))
        assert [p.stem.split("_", 1)[1] for p in pngs] == record["labels"]
        for png in pngs:
            with Image.open(png) as overlay:
                assert overlay.size == (64, 64)
    assert (attention_dir / "contact_sheet.png").stat().st_size > 1000


@pytest.mark.slow
def test_predict_command_csv_top_k_regular_weights(tiny_run, tmp_path, capsys):
    from mlcnc.engine import load_trained

    code = main(
        [
            "predict",
            str(tiny_run.checkpoint),
            str(tiny_run.data / "images"),
            "--top-k",
            "2",
            "--format",
            "csv",
            "--no-ema",
            "--no-progress",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert len(rows) == 25 + 8 + 8  # every image of the three splits
    trained = load_trained(tiny_run.checkpoint, use_ema=False)
    first = tiny_run.data / "images" / rows[0]["image"].rsplit("/", 1)[-1]
    with torch.no_grad():
        row = torch.sigmoid(trained.model(trained.transform(_read(first))[None]).logits)[0]
    best = [tiny_run.class_names[c] for c in torch.argsort(row, descending=True)[:2]]
    assert rows[0]["labels"].split(";") == best
    assert all(len(r["labels"].split(";")) == 2 for r in rows)
    assert "skipped 0 unreadable" in captured.err


@pytest.mark.slow
def test_predict_command_errors(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"nowhere\.png: no such image"):
        main(["predict", str(tiny_run.run), str(tmp_path / "nowhere.png")])
    with pytest.raises(SystemExit):  # argparse: --threshold and --top-k exclude each other
        main(["predict", str(tiny_run.run), str(tmp_path), "--threshold", "0.5", "--top-k", "1"])
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"garbage")
    assert main(["predict", str(tiny_run.run), str(only_bad), "--no-progress"]) == 1
    assert "predicted 0 images; skipped 1 unreadable" in capsys.readouterr().err


def _read(path):
    from mlcnc.data import read_image

    return read_image(path)
