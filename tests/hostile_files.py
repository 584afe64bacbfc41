"""Hostile uploads for the UI tests: made byte by byte, so none of them is ever decoded to build it."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, width: int = 40_000, height: int = 40_000) -> Path:
    """A valid PNG header announcing width x height RGB pixels, with one compressed row of data: a few
    hundred bytes that would decode to width * height * 3 bytes (4.8 GB at the default size)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\x00" + b"\x00" * (3 * width), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", row) + _chunk(b"IEND", b""))
    return path


def text_as_png(path: Path) -> Path:
    """A text file with an image's name."""
    path.write_text("#!/bin/sh\necho this is not an image\n")
    return path


def truncated_png(path: Path) -> Path:
    """The first 60 bytes of a real PNG."""
    from PIL import Image

    full = path.with_suffix(".full.png")
    Image.new("RGB", (32, 32), (200, 30, 30)).save(full)
    path.write_bytes(full.read_bytes()[:60])
    full.unlink()
    return path
