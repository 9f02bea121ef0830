"""The embedded Twemoji benchmark: label statistics, determinism, rendering, cache safety."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlcnc.data import synthetic
from mlcnc.data.readers import read_csv_split
from mlcnc.data.synthetic import (
    CLASS_EMOJIS,
    DISTRACTOR_EMOJIS,
    SyntheticConfig,
    ensure_synthetic_benchmark,
    long_tail_statistics,
    sample_label_sets,
)

TINY = SyntheticConfig(
    num_classes=5,
    image_size=32,
    train_max_count=10,
    train_min_count=2,
    val_per_class=2,
    test_per_class=3,
    seed=3,
)


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def label_matrix(rows: list[list[str]], names: list[str]) -> np.ndarray:
    """(N, C) uint8 from CSV rows (header skipped)."""
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(rows) - 1, len(names)), dtype=np.uint8)
    for i, (_, labels) in enumerate(rows[1:]):
        for name in labels.split(";"):
            matrix[i, index[name]] = 1
    return matrix


# --------------------------------------------------------------------------- label sets


def test_catalogue_is_valid():
    codepoints = [emoji.codepoint for emoji in CLASS_EMOJIS + DISTRACTOR_EMOJIS]
    assert len(CLASS_EMOJIS) >= 20
    assert len(set(codepoints)) == len(codepoints), "a distractor is also a class"
    assert len({emoji.name for emoji in CLASS_EMOJIS}) == len(CLASS_EMOJIS)
    assert all(";" not in e.name and "," not in e.name for e in CLASS_EMOJIS)
    sprites = synthetic._load_sprites(CLASS_EMOJIS + DISTRACTOR_EMOJIS)
    assert all(sprite.mode == "RGBA" and sprite.size == (72, 72) for sprite in sprites)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_classes", 1),
        ("num_classes", len(CLASS_EMOJIS) + 1),
        ("train_min_count", 0),
        ("train_max_count", 5),  # below train_min_count=7
        ("objects_per_image", (0.5, 0.4)),
        ("objects_per_image", (0.2, 0.2, 0.2, 0.2, 0.2)),
        ("partner_probability", 1.5),
        ("object_scale", (0.5, 0.3)),
        ("object_scale", (0.3, 1.2)),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**{field: value})


def test_label_sets_are_deterministic_per_seed():
    first, again = sample_label_sets(TINY), sample_label_sets(TINY)
    other = sample_label_sets(SyntheticConfig(**{**TINY.to_dict(), "seed": 4}))
    for split in synthetic.SPLITS:
        np.testing.assert_array_equal(first[split], again[split])
    assert any(
        first[s].shape != other[s].shape or (first[s] != other[s]).any() for s in synthetic.SPLITS
    )


def test_default_benchmark_is_long_tailed_with_balanced_evaluation_splits():
    config = SyntheticConfig()
    label_sets = sample_label_sets(config)
    stats = long_tail_statistics(config)
    stats.check(min_imbalance=50)  # head, medium and tail all present

    train = label_sets["train"]
    assert 1500 <= len(train) <= 2500
    assert 400 <= len(label_sets["val"]) <= 600
    assert 1000 <= len(label_sets["test"]) <= 1500
    np.testing.assert_array_equal(train.sum(axis=0), stats.counts)
    np.testing.assert_array_equal(
        stats.counts, synthetic.scene_grammar(config).train_targets
    )  # quotas met exactly
    assert stats.counts.max() / stats.counts.min() >= 50
    assert all(len(stats.groups[g]) >= 3 for g in ("head", "medium", "tail"))
    assert (stats.counts[stats.groups["head"]] >= 100).all()
    assert (stats.counts[stats.groups["tail"]] < 20).all()
    assert set(np.concatenate(list(stats.groups.values()))) == set(range(config.num_classes))

    for split, labels in label_sets.items():
        cardinality = labels.sum(axis=1)
        assert cardinality.min() >= 1, f"{split}: an image without labels"
        assert cardinality.max() <= 4, f"{split}: more than 4 objects"
        assert len(np.unique(labels, axis=0)) > 50, f"{split}: label sets lack variety"
    assert (label_sets["val"].sum(axis=0) == config.val_per_class).all()
    assert (label_sets["test"].sum(axis=0) == config.test_per_class).all()


def test_tail_classes_cooccur_with_their_head_partner_above_chance():
    config = SyntheticConfig()
    train = sample_label_sets(config)["train"].astype(bool)
    stats = long_tail_statistics(config)
    partner = synthetic.scene_grammar(config).partner
    head = set(stats.groups["head"].tolist())
    for tail_class in stats.groups["tail"]:
        mate = partner[tail_class]
        assert mate in head
        with_tail = train[train[:, tail_class]]
        p_mate_given_tail = with_tail[:, mate].mean()
        p_mate = train[:, mate].mean()
        assert p_mate_given_tail > 1.5 * p_mate, (tail_class, p_mate_given_tail, p_mate)
        # Tail objects appear beside head ones far more often than alone.
        assert with_tail[:, sorted(head)].any(axis=1).mean() >= 0.6


# --------------------------------------------------------------------------- rendering


def test_visible_fraction_counts_frame_and_occlusion():
    size, pad = 20, 20
    opaque = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    below = synthetic._Layer(opaque, pad + 0, pad + 0, True)
    above_half = synthetic._Layer(opaque, pad + 5, pad + 0, True)  # covers the right half
    out_of_frame = synthetic._Layer(opaque, pad - 5, pad + 10, True)  # half left of frame
    fractions = synthetic._visible_fractions([below, above_half, out_of_frame], size, pad)
    np.testing.assert_allclose(fractions, [0.5, 1.0, 0.5])


def test_tiny_benchmark_round_trips(tmp_path):
    root = ensure_synthetic_benchmark(tmp_path / "bench", TINY)
    assert root == tmp_path / "bench"
    names = (root / "classes.txt").read_text().splitlines()
    assert names == synthetic.class_names(TINY)
    expected = sample_label_sets(TINY)
    manifest = json.loads((root / synthetic.MANIFEST_NAME).read_text())
    assert "Twemoji" in manifest["credit"] and "CC-BY 4.0" in manifest["credit"]
    assert manifest["config"] == TINY.to_dict()
    for split in synthetic.SPLITS:
        rows = read_csv(root / f"{split}.csv")
        assert rows[0] == ["image", "labels"]
        np.testing.assert_array_equal(label_matrix(rows, names), expected[split])
        assert manifest["splits"][split]["images"] == len(rows) - 1
        assert manifest["splits"][split]["class_counts"] == expected[split].sum(0).tolist()
        split_read = read_csv_split(root / f"{split}.csv")  # the data engineer's CSV reader
        assert split_read.class_names == names
        np.testing.assert_array_equal(split_read.labels, expected[split])
        for image_path, _ in rows[1:]:
            with Image.open(root / image_path) as image:
                image.load()
                assert image.mode == "RGB" and image.size == (32, 32)


def test_rendering_is_deterministic_and_seed_dependent(tmp_path):
    first = ensure_synthetic_benchmark(tmp_path / "a", TINY)
    again = ensure_synthetic_benchmark(tmp_path / "b", TINY)
    other = ensure_synthetic_benchmark(
        tmp_path / "c", SyntheticConfig(**{**TINY.to_dict(), "seed": 4})
    )
    for name in ("classes.txt", "train.csv", "val.csv", "test.csv"):
        assert (first / name).read_bytes() == (again / name).read_bytes()
    assert (first / "train.csv").read_bytes() != (other / "train.csv").read_bytes()
    for image_path, _ in read_csv(first / "test.csv")[1:]:
        pixels = np.asarray(Image.open(first / image_path))
        np.testing.assert_array_equal(pixels, np.asarray(Image.open(again / image_path)))
        assert not np.array_equal(pixels, np.asarray(Image.open(other / image_path)))


def test_scenes_vary_and_are_not_blank():
    config = SyntheticConfig(image_size=64)
    sprites = synthetic._load_sprites(CLASS_EMOJIS[: config.num_classes])
    distractors = synthetic._load_sprites(DISTRACTOR_EMOJIS)
    scenes = [
        np.asarray(
            synthetic._render_scene(
                np.array([0, 5]), sprites, distractors, config, np.random.default_rng(i)
            ),
            dtype=np.float32,
        )
        for i in range(4)
    ]
    assert all(scene.shape == (64, 64, 3) and scene.std() > 10 for scene in scenes)
    assert all(np.abs(scenes[0] - s).mean() > 10 for s in scenes[1:])


# --------------------------------------------------------------------------- cache


def test_cache_is_reused_without_rendering(tmp_path, monkeypatch):
    root = ensure_synthetic_benchmark(tmp_path / "bench", TINY)
    before = (root / "train.csv").stat().st_mtime_ns

    def must_not_render(*args, **kwargs):
        raise AssertionError("a completed cache was regenerated")

    monkeypatch.setattr(synthetic, "_render_scene", must_not_render)
    assert ensure_synthetic_benchmark(tmp_path / "bench", TINY) == root
    # A root without a config (how build_splits calls it) reuses whatever benchmark is there.
    assert ensure_synthetic_benchmark(tmp_path / "bench") == root
    assert (root / "train.csv").stat().st_mtime_ns == before


def test_cache_refuses_a_folder_of_another_config_or_without_manifest(tmp_path):
    ensure_synthetic_benchmark(tmp_path / "bench", TINY)
    with pytest.raises(ValueError, match="another config"):
        ensure_synthetic_benchmark(
            tmp_path / "bench", SyntheticConfig(**{**TINY.to_dict(), "seed": 9})
        )
    (tmp_path / "stranger").mkdir()
    with pytest.raises(FileExistsError, match="stranger"):
        ensure_synthetic_benchmark(tmp_path / "stranger", TINY)


def test_interrupted_generation_leaves_no_half_cache(tmp_path, monkeypatch):
    real_render = synthetic._render_scene
    calls = {"n": 0}

    def crash_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # like Ctrl-C during generation
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_render_scene", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_benchmark(tmp_path / "bench", TINY)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a staging leftover

    monkeypatch.setattr(synthetic, "_render_scene", real_render)
    root = ensure_synthetic_benchmark(tmp_path / "bench", TINY)
    assert (root / synthetic.MANIFEST_NAME).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]


def test_default_root_lives_under_mlcnc_home_and_depends_on_config(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCNC_HOME", str(tmp_path))
    default = synthetic.default_root()
    assert default.parent == tmp_path / "synthetic"
    assert default.name.startswith(f"v{synthetic.GENERATOR_VERSION}-")
    assert synthetic.default_root(TINY) != default
    assert synthetic.default_root(SyntheticConfig()) == default
    root = ensure_synthetic_benchmark(config=TINY)
    assert root == synthetic.default_root(TINY) and (root / "test.csv").is_file()


def test_build_splits_reads_a_generated_benchmark(tmp_path):
    from mlcnc.data import DataConfig, build_splits

    root = ensure_synthetic_benchmark(tmp_path / "bench", TINY)
    splits = build_splits(DataConfig(synthetic_root=str(root)))
    expected = sample_label_sets(TINY)
    assert sorted(splits) == ["test", "train", "val"]
    for split, data in splits.items():
        assert data.class_names == synthetic.class_names(TINY)
        np.testing.assert_array_equal(data.labels, expected[split])
        assert all(path.is_file() for path in data.image_paths)


def test_concurrent_generation_keeps_the_first_finished_copy(tmp_path, monkeypatch):
    real_render = synthetic._render_scene
    raced = {"done": False}

    def render_while_another_process_finishes(*args, **kwargs):
        if not raced["done"]:
            raced["done"] = True
            ensure_synthetic_benchmark(tmp_path / "bench", TINY)  # the other process wins
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_render_scene", render_while_another_process_finishes)
    root = ensure_synthetic_benchmark(tmp_path / "bench", TINY)
    assert raced["done"] and (root / synthetic.MANIFEST_NAME).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]  # loser's staging removed
