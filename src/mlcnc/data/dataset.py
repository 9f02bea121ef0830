"""Image decoding (``read_image``, ``probe_image``) and the torch Dataset over a
``MultiLabelSplit``.

Each item is ``(image, target, index)``: image the transformed float tensor (3, H, W),
target the (C,) float32 multi-hot row, index the row of the split it came from.

Images are read with Pillow: the header first (size and format without decoding), refused
above a pixel limit before any pixel is decoded, then the first frame only (an animated GIF
or WebP, an APNG, a multi-page TIFF give one image), converted to 3-channel uint8 RGB from
any mode (grey, 1-bit, palette, LA / RGBA (alpha dropped), CMYK, 16-bit). EXIF orientation is
not applied, as in torchvision's decoders and the benchmarks' published loaders. A limit
above Pillow's ``Image.MAX_IMAGE_PIXELS`` (or None, no limit) raises that global to match
(Pillow itself would refuse such images at open).

A bad image raises ``BadImageError`` naming the file and, in the dataset, the CSV (or
annotation) line it is listed on. The dataset never substitutes another image for a bad
one: find bad images before a run with ``mlcnc.data.check`` (``check_splits``), or drop
them with ``drop_bad_rows`` (what ``data.skip_bad_images`` asks for), so every row is
scored exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mlcnc.data.readers import MultiLabelSplit, file_problem, show_path

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
"""Largest image (width x height) read by default: Pillow's own ``MAX_IMAGE_PIXELS``
(about 9459 x 9459; 268 MB as RGB uint8). Larger images are refused from their header."""

MAX_ASPECT_RATIO = 100
"""Longest side / shortest side of an image read: every transform resizes the short side
(or both) to about the model's input size, so an image of 1 x 1,000,000 pixels (a 201-byte
PNG under the pixel limit) would become 37 x 37,000,000 and exhaust memory. The header
check refuses it, wherever images are read (data check, training, evaluation, predict)."""

SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF")
"""Pillow formats read; ``MPO`` (a camera JPEG holding several pictures) counts as JPEG."""

_READ_FORMATS = {*SUPPORTED_FORMATS, "MPO"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


class BadImageError(RuntimeError):
    """An image that cannot be read; ``path`` and ``reason`` apart, the message has both."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{show_path(path)}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    """What an image file's header says: Pillow format, size and pixel mode."""

    format: str
    width: int
    height: int
    mode: str


def probe_image(
    path: str | Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, *, verify: bool = True
) -> ImageInfo:
    """Check an image file without decoding its pixels: a regular, non-empty file in a
    supported format, at most ``max_pixels`` pixels (None: no limit), and (``verify``)
    Pillow's integrity check (PNG chunk checksums; JPEG and GIF data are only checked by
    decoding, see ``read_image``). ``BadImageError`` saying why not."""
    path = Path(path)
    with _open_image(path, max_pixels) as image:
        info = ImageInfo(image.format or "?", image.width, image.height, image.mode)
        if verify:
            try:
                image.verify()
            except Exception as err:  # any decoder error: the file is bad
                raise BadImageError(path, f"corrupt {info.format} data ({_why(err)})") from None
    return info


def read_image(
    path: str | Path,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    *,
    draft_min_side: int | None = None,
) -> torch.Tensor:
    """Decode the first frame of ``path`` to a uint8 RGB tensor (3, H, W).

    The header is read first: a file that is missing, empty, not a JPEG / PNG / WebP / GIF,
    or larger than ``max_pixels`` (None: no limit) is refused before decoding. Truncated or
    corrupt data is an error, never a grey patch. ``BadImageError`` naming the file.
    ``draft_min_side``: decode a JPEG at the smallest libjpeg scale (1/2, 1/4, 1/8) that keeps
    both sides >= it (measured in ``benchmarks/bench_data.py``: it pays only for sources
    several times larger than the crop); other formats at full size.
    """
    path = Path(path)
    with _open_image(path, max_pixels) as image:
        if draft_min_side is not None and image.format == "JPEG":
            image.draft("RGB", (draft_min_side, draft_min_side))
        try:
            pixels = _rgb_pixels(image, path)
            chw = np.ascontiguousarray(pixels.transpose(2, 0, 1))
            if not chw.flags.writeable:  # Pillow's read-only buffer, not copied (a 1 x 1 image)
                chw = chw.copy()
        except BadImageError:
            raise
        except MemoryError:  # the machine's limit, not the file's fault: not "corrupt"
            raise BadImageError(path, _memory_hint(image.width, image.height)) from None
        except Exception as err:  # any decoder error: the file is bad
            raise BadImageError(path, f"cannot decode {image.format} image ({_why(err)})") from None
    return torch.from_numpy(chw)


class _OpenImage:
    """Context manager: the open file and the lazily opened Pillow image, both closed on exit."""

    def __init__(self, handle, image: Image.Image) -> None:
        self.handle, self.image = handle, image

    def __enter__(self) -> Image.Image:
        return self.image

    def __exit__(self, *exc: object) -> None:
        self.image.close()
        self.handle.close()


def _open_image(path: Path, max_pixels: int | None) -> _OpenImage:
    """Open ``path`` and parse its header (no pixels decoded); refuse what ``read_image``
    refuses before decoding."""
    problem, _ = file_problem(path)
    if problem is not None:
        raise BadImageError(path, problem)
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by _OpenImage)
    except OSError as err:
        raise BadImageError(path, f"cannot open ({err.strerror or err})") from None
    try:
        image = _identify(handle, path, max_pixels)
    except BaseException:
        handle.close()
        raise
    return _OpenImage(handle, image)


def _identify(handle, path: Path, max_pixels: int | None) -> Image.Image:
    if max_pixels is None or max_pixels > (Image.MAX_IMAGE_PIXELS or max_pixels):
        # Pillow refuses images above 2 x its own limit at open; ours is the limit here.
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        image = Image.open(handle, formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as err:  # above 2 x our limit: Pillow says so first
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)):,} pixels" if found else "the image"
        raise BadImageError(
            path, f"{size} is above the limit of {max_pixels:,}; {_limit_hint(max_pixels)}"
        ) from None
    except Exception:  # Pillow raises many types on hostile headers
        raise BadImageError(path, _unsupported(handle)) from None
    if image.format not in _READ_FORMATS:
        image.close()
        raise BadImageError(path, f"unsupported image format {image.format}; {_convert_hint()}")
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise BadImageError(path, f"degenerate image size {width} x {height}")
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise BadImageError(
            path,
            f"{width * height:,} pixels is above the limit of {max_pixels:,} "
            f"({width} x {height}); {_limit_hint(max_pixels)}",
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        image.close()
        raise BadImageError(
            path,
            f"{width} x {height} pixels: an aspect ratio above {MAX_ASPECT_RATIO}:1, which "
            "resizing to the model's input would blow up to a huge image; crop it",
        )
    return image


def _rgb_pixels(image: Image.Image, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 of the current (first) frame, from any Pillow mode."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and image.format == "PNG"):
        # 16-bit grey (older Pillows say "I" for PNG): scale 0..65535 to 0..255, not clip
        grey = np.asarray(image).astype(np.uint32)
        grey = ((grey * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("I", "F"):
        raise BadImageError(
            path,
            f"unsupported pixel mode {mode} (32-bit {'integer' if mode == 'I' else 'float'} "
            f"{image.format}); {_convert_hint()}",
        )
    if "A" in mode or "a" in mode or "transparency" in image.info:
        return np.asarray(image.convert("RGBA"))[:, :, :3]  # alpha dropped, colours kept
    return np.asarray(image.convert("RGB"))


def _unsupported(handle) -> str:
    """Why Pillow did not open a file as a supported image: name the format if it is one."""
    handle.seek(0)
    try:
        with Image.open(handle) as other:  # any format, header only, to name it
            return f"unsupported image format {other.format}; {_convert_hint()}"
    except Exception:  # not an image at all
        handle.seek(0)
        start = handle.read(16)
    for magic, name in _MAGIC:
        if start.startswith(magic) and (name != "WEBP" or start[8:12] == b"WEBP"):
            return f"corrupt {name} header"
    looks = "a text file" if _is_text(start) else "unrecognised data"
    return f"not an image file ({looks}; JPEG, PNG, WebP or GIF expected)"


_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"RIFF", "WEBP"),
)


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(b >= 32 or b in b"\t\n\r" for b in data)


def _convert_hint() -> str:
    return "convert it to PNG or JPEG"


def _limit_hint(max_pixels: int | None) -> str:
    return (
        f"shrink the image or raise data.max_image_pixels (now {max_pixels:,})"
        if max_pixels is not None
        else "shrink the image"
    )


def _memory_hint(width: int, height: int) -> str:
    return (
        f"too large to decode in memory ({width} x {height} = {width * height:,} pixels); "
        "lower the pixel limit (data check --max-pixels, data.max_image_pixels) to refuse "
        "it from its header, or shrink the image"
    )


def _why(err: BaseException) -> str:
    return str(err) or type(err).__name__


class MultiLabelDataset(Dataset):
    """Images and multi-hot targets of one split (see the module docstring).

    max_pixels: refuse images above this many pixels (``read_image``).
    skip_bad_images: kept for callers of the old signature. The dataset never substitutes
    images; with True a bad image's error says that its row should have been dropped before
    the run (``mlcnc.data.check.drop_bad_rows``).
    """

    def __init__(
        self,
        split: MultiLabelSplit,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        skip_bad_images: bool = False,
        *,
        max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.split = split
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.max_pixels = max_pixels
        self.targets = torch.from_numpy(np.ascontiguousarray(split.labels, dtype=np.float32))

    @property
    def class_names(self) -> list[str]:
        return self.split.class_names

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        path = self.split.image_paths[index]
        try:
            image = read_image(path, self.max_pixels)
        except BadImageError as err:
            hint = (
                "data.skip_bad_images drops bad rows before a run starts: the file changed "
                "after that check"
                if self.skip_bad_images
                else f"the first bad image met; {_check_command(self.split.source)} decodes "
                "every image and lists every bad one, or set data.skip_bad_images=true to "
                "drop them (it decodes every image before the run)"
            )
            raise BadImageError(
                path, f"{err.reason} (listed at {self.split.where(index)}; {hint})"
            ) from None
        if self.transform is not None:
            image = self.transform(image)
        if not torch.is_floating_point(image):
            image = image.float().div_(255)
        return image, self.targets[index], index


def _check_command(source: str) -> str:
    """The ``mlcnc data check --decode`` command that lists every bad image of a split read
    from ``source`` (a CSV file; else the config's splits)."""
    import shlex

    if str(source).lower().endswith(".csv"):
        return f"`mlcnc data check --csv {shlex.quote(show_path(source))} --decode`"
    return "`mlcnc data check --config CONFIG --decode` (with the run's config and overrides)"


def build_dataset(
    split: MultiLabelSplit,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    skip_bad_images: bool = False,
    *,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> MultiLabelDataset:
    """The Dataset for ``split`` (contract name used by the engine)."""
    return MultiLabelDataset(split, transform, skip_bad_images, max_pixels=max_pixels)
