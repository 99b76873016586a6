"""Hostile payloads built byte by byte: PNG decompression bombs, truncated images, data URLs.

A bomb here is a complete, valid PNG: one-bit greyscale rows of zeros compress about a
thousandfold, so a file of tens of kilobytes declares (and would decode to) hundreds of
millions of pixels.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A one-bit greyscale PNG of zeros, `width` x `height` pixels, compressed at level 9."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter type 0, then the packed pixels
    compressor = zlib.compressobj(9)
    rows_per_piece = max(1, (4 << 20) // len(row))
    idat = []
    for start in range(0, height, rows_per_piece):
        idat.append(compressor.compress(row * min(rows_per_piece, height - start)))
    idat.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(idat)) + _chunk(b"IEND", b"")


def photo_png(size: int = 64, seed: int = 0) -> bytes:
    """A small, honest PNG of noise (noise does not compress, so truncating it loses pixels)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_message(*urls: str, text: str = "What is in the picture?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def png_declared_only(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares `width` x `height` pixels: its pixel
    data stops after the first row."""
    row = b"\x00" + bytes((width + 7) // 8)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(row, 9)) + _chunk(b"IEND", b"")
