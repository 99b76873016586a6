"""Untrusted image input: every failure is a clear `ImageError`, nothing is fetched."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from tiny_checkpoints import image_bytes

from workers.vision import preprocess as pp
from workers.vision.preprocess import ImageError, decode_data_url, open_image


def test_data_urls_decode_and_remote_urls_are_refused():
    data = image_bytes(8, 8)
    assert decode_data_url("data:image/png;base64," + base64.b64encode(data).decode()) == data
    with pytest.raises(ImageError, match="disabled"):
        decode_data_url("https://example.com/cat.png")
    with pytest.raises(ImageError, match="not supported"):
        decode_data_url("https://example.com/cat.png", allow_remote=True)
    with pytest.raises(ImageError, match="base64"):
        decode_data_url("data:image/png;base64,@@@@")
    with pytest.raises(ImageError, match="data:image"):
        decode_data_url("file:///etc/passwd")


def test_corrupt_and_unsupported_images_are_rejected():
    with pytest.raises(ImageError, match="empty"):
        open_image(b"")
    with pytest.raises(ImageError, match="cannot be decoded"):
        open_image(b"\x89PNG\r\n\x1a\n garbage")
    truncated = image_bytes(64, 64, "PNG")[:60]
    with pytest.raises(ImageError):
        open_image(truncated)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="TIFF")
    with pytest.raises(ImageError, match="not supported"):
        open_image(buf.getvalue())


def test_oversized_images_are_rejected_before_decoding(monkeypatch):
    monkeypatch.setattr(pp, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match="pixels"):
        open_image(image_bytes(20, 20))
    monkeypatch.setattr(pp, "MAX_IMAGE_BYTES", 10)
    with pytest.raises(ImageError, match="bytes"):
        open_image(image_bytes(2, 2))


def test_gif_uses_its_first_frame_and_modes_become_rgb():
    frames = [Image.new("P", (8, 8), color=i) for i in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    image = open_image(buf.getvalue())
    assert image.mode == "RGB" and image.size == (8, 8)
