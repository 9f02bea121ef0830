"""The VOC-LT and COCO-LT benchmarks (Wu et al., ECCV 2020; used by MLC-NC).

Each benchmark's training subset is defined by one split file of image ids, published in
the DistributionBalancedLoss repository. On first use it is downloaded from its canonical
raw URL, verified against its SHA-256 digest and cached under ``$MLCNC_HOME/benchmarks``
(default ``~/.cache/mlcnc``); a local copy can be given instead (it is verified too).
Split files are plain text (COCO-LT's ``img_id.pkl`` too, despite its name): nothing is
ever unpickled.

- VOC-LT: train on the 1,142 listed VOC2012 trainval images; test on VOC2007 test.
- COCO-LT: train on the 1,909 listed COCO2017 train images; test on all 5,000 val2017 images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcnc.data.readers import DataError, MultiLabelSplit
from mlcnc.data.voc_coco import read_coco, read_id_list, read_voc
from mlcnc.io import write_atomic

RAW_URL = "https://raw.githubusercontent.com/wutong16/DistributionBalancedLoss/master/{path}"
"""Canonical location of the split files (the DistributionBalancedLoss repository)."""


@dataclass(frozen=True)
class SplitFile:
    benchmark: str
    repo_path: str  # path inside the DistributionBalancedLoss repository
    sha256: str
    num_ids: int

    @property
    def filename(self) -> str:
        return Path(self.repo_path).name

    @property
    def url(self) -> str:
        return RAW_URL.format(path=self.repo_path)


SPLIT_FILES: dict[str, SplitFile] = {
    "voc_lt": SplitFile(
        "voc_lt",
        "appendix/VOCdevkit/longtail2012/img_id.txt",
        "6e49185d5421236718f7393e952f5790e5c0cfeb1694892b1b971f59725d5ebc",
        1142,
    ),
    "coco_lt": SplitFile(
        "coco_lt",
        "appendix/coco/longtail2017/img_id.pkl",
        "f31e853d2c7b69512c62b65ff1db067a49b3ab86a62f685c7da86b7c3dd04768",
        1909,
    ),
}


class ChecksumError(DataError):
    """A split file whose SHA-256 digest is not the published one."""


class SplitFileUnavailable(RuntimeError):
    """The split file is neither cached nor downloadable; the message says what to do."""


def mlcnc_home() -> Path:
    """``$MLCNC_HOME``, default ``~/.cache/mlcnc``: the one place it is resolved, and made
    if missing. A writable folder: a path through a file, one that cannot be made or is not
    writable is refused (``ConfigError`` naming MLCNC_HOME) before anything is read or
    written under it."""
    from mlcnc.schema import ConfigError

    setting = os.environ.get("MLCNC_HOME")
    home = Path(setting or Path.home() / ".cache" / "mlcnc").expanduser()
    for folder in (home, *home.parents):
        if folder.is_dir():
            break
        if folder.exists() or folder.is_symlink():
            what = f"MLCNC_HOME={setting}" if setting else f"the default MLCNC_HOME {home}"
            kind = "a broken symbolic link" if not folder.exists() else "a file"
            raise ConfigError(
                f"{what}: {folder} is {kind}, not a folder; set MLCNC_HOME to a folder (where "
                "mlcnc caches benchmarks and text embeddings)"
            )
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        what = f"MLCNC_HOME={setting}" if setting else f"the default MLCNC_HOME {home}"
        raise ConfigError(
            f"{what}: the folder cannot be made ({err.strerror or err}); set MLCNC_HOME to a "
            "writable folder (where mlcnc caches benchmarks and text embeddings)"
        ) from None
    if not os.access(home, os.W_OK | os.X_OK):
        what = f"MLCNC_HOME={setting}" if setting else f"the default MLCNC_HOME {home}"
        raise ConfigError(
            f"{what}: the folder is not writable; set MLCNC_HOME to a writable folder (where "
            "mlcnc caches benchmarks and text embeddings)"
        )
    return home


def cached_split_path(benchmark: str) -> Path:
    """Where the split file of ``benchmark`` is cached."""
    spec = _spec(benchmark)
    return mlcnc_home() / "benchmarks" / benchmark / spec.filename


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_split_file(benchmark: str, path: str | Path) -> Path:
    """Check ``path`` against the published digest; ``ChecksumError`` naming it if not."""
    spec = _spec(benchmark)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {benchmark} split file not found")
    actual = sha256_of(path)
    if actual != spec.sha256:
        raise ChecksumError(
            f"{path}: SHA-256 {actual} does not match the published {spec.filename} "
            f"({spec.sha256}); delete it and fetch it again from {spec.url}"
        )
    return path


def fetch_split_file(
    benchmark: str,
    local_file: str | Path | None = None,
    *,
    url: str | None = None,
    timeout: float = 30.0,
) -> Path:
    """Path of the verified split file of ``benchmark`` (``voc_lt`` or ``coco_lt``).

    local_file: use this copy (verified) instead of the cache.
    url:        override the canonical URL (tests use a ``file://`` URL).
    Otherwise the cached copy, downloaded on first use with a temp file + atomic rename.
    """
    spec = _spec(benchmark)
    if local_file is not None:
        return verify_split_file(benchmark, local_file)
    target = cached_split_path(benchmark)
    if target.is_file():
        return verify_split_file(benchmark, target)
    source = url or spec.url

    def download(out: Any) -> None:
        digest = hashlib.sha256()
        with urllib.request.urlopen(source, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 16), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != spec.sha256:
            raise ChecksumError(
                f"{spec.filename} downloaded from {source}: SHA-256 {digest.hexdigest()} does "
                f"not match the published {spec.sha256}; nothing was cached"
            )

    try:
        write_atomic(target, writer=download, mode=0o644)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise SplitFileUnavailable(
            f"cannot download the {benchmark} split file ({err}). Fetch {spec.filename} "
            f"yourself from {spec.url} and put it at {target} (or pass it as a local file: "
            f"data.{benchmark}_split_file in a config); its SHA-256 must be {spec.sha256}"
        ) from None
    return target


def read_split_ids(benchmark: str, path: str | Path) -> list[str]:
    """The image ids of a split file, one per line, in file order (count checked)."""
    return _split_ids(benchmark, path)[0]


def _split_ids(benchmark: str, path: str | Path) -> tuple[list[str], list[int]]:
    """The image ids of a split file and their line numbers (for messages)."""
    spec = _spec(benchmark)
    ids, lines = read_id_list(path, f"{benchmark} split file")
    if len(ids) != spec.num_ids:
        raise DataError(f"{path}: expected {spec.num_ids} image ids, found {len(ids)}")
    return ids, lines


def _listed_by(split: MultiLabelSplit, path: Path, lines: list[int]) -> MultiLabelSplit:
    """``split`` with rows located in the split file that listed them."""
    return dataclasses.replace(split, source=str(path), lines=lines, line_kind="line")


def build_voc_lt(
    voc2012_root: str | Path,
    voc2007_root: str | Path,
    split_file: str | Path | None = None,
) -> dict[str, MultiLabelSplit]:
    """VOC-LT: ``train`` = the listed VOC2012 trainval images (split-file order),
    ``test`` = VOC2007 test. Roots are the VOCdevkit/VOC2012 and VOCdevkit/VOC2007 folders.
    Image files are not checked here (``mlcnc.data.check`` does)."""
    path = fetch_split_file("voc_lt", split_file)
    ids, lines = _split_ids("voc_lt", path)
    train = _listed_by(read_voc(voc2012_root, ids), path, lines)
    return {"train": train, "test": read_voc(voc2007_root, "test")}


def build_coco_lt(
    coco_root: str | Path,
    split_file: str | Path | None = None,
) -> dict[str, MultiLabelSplit]:
    """COCO-LT: ``train`` = the listed COCO2017 train images (split-file order),
    ``test`` = all 5,000 val2017 images. ``coco_root`` holds ``annotations/``,
    ``train2017/`` and ``val2017/``. Image files are not checked here (``mlcnc.data.check``
    does)."""
    root = Path(coco_root)
    path = fetch_split_file("coco_lt", split_file)
    ids, lines = _split_ids("coco_lt", path)
    for image_id, line in zip(ids, lines, strict=True):
        if not image_id.isdigit():
            raise DataError(f"{path}, line {line}: COCO-LT image id {image_id!r} is not an integer")
    train = read_coco(
        root / "annotations" / "instances_train2017.json",
        root / "train2017",
        [int(i) for i in ids],
    )
    train = _listed_by(train, path, lines)
    test = read_coco(root / "annotations" / "instances_val2017.json", root / "val2017")
    return {"train": train, "test": test}


def _spec(benchmark: str) -> SplitFile:
    try:
        return SPLIT_FILES[benchmark]
    except KeyError:
        raise ValueError(
            f"unknown benchmark {benchmark!r}; choose one of: {', '.join(SPLIT_FILES)}"
        ) from None
