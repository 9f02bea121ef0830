"""Hostile image files for the tests, all small on disk and cheap to make."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED, BLUE = (255, 0, 0), (0, 0, 255)


def encoded(mode: str = "RGB", fmt: str = "PNG", size: tuple[int, int] = (20, 12)) -> bytes:
    """Random pixels in ``mode`` (``RGB``, ``RGBA``, ``L``), encoded as ``fmt``."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def huge_png(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit ``side`` x ``side`` PNG, all black: about 50 KB on disk for 20000
    (400 million pixels, 1.2 GB as RGB), written row by row without a pixel buffer."""
    row = b"\x00" + bytes((side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def animated(path: Path, fmt: str, size: tuple[int, int] = (8, 6)) -> Path:
    """Two frames, red then blue (different sizes are not needed: frames share the canvas)."""
    frames = [Image.new("RGB", size, RED), Image.new("RGB", size, BLUE)]
    options = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, **options)
    return path


def cmyk_jpeg(path: Path, size: tuple[int, int] = (8, 6)) -> Path:
    """A flat CMYK JPEG of (C, M, Y, K) = (0, 255, 255, 0): red."""
    Image.new("CMYK", size, (0, 255, 255, 0)).save(path, "JPEG", quality=95)
    return path


def palette_png(path: Path) -> tuple[Path, np.ndarray]:
    """A palette image and the RGB it stands for (palette looked up by hand)."""
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.tobytes())
    image.save(path)
    return path, palette[indices]


def sixteen_bit_png(path: Path) -> tuple[Path, np.ndarray]:
    """A 16-bit greyscale PNG and its values scaled to 8 bits, round(v / 257), as RGB."""
    rng = np.random.default_rng(2)
    values = rng.integers(0, 65536, (6, 8)).astype(np.uint16)
    Image.fromarray(values).save(path)
    grey = np.round(values / 257).astype(np.uint8)
    return path, np.repeat(grey[:, :, None], 3, axis=2)


def grey_alpha_png(path: Path) -> tuple[Path, np.ndarray]:
    """An LA image (grey + alpha) and its grey values as RGB (alpha dropped)."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (6, 8, 2), dtype=np.uint8)
    Image.fromarray(pixels, "LA").save(path)
    return path, np.repeat(pixels[:, :, :1], 3, axis=2)


def truncated_png(path: Path) -> Path:
    data = encoded()
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_jpeg(path: Path) -> Path:
    data = encoded(fmt="JPEG", size=(64, 48))
    path.write_bytes(data[: len(data) // 2])
    return path


def text_file(path: Path) -> Path:
    path.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/bin/sh\n")
    return path
