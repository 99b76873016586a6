"""Preprocessing equals `transformers`' CLIP image processor; untrusted input fails clearly."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from vision_fixtures import encode_image
from PIL import Image

from workers.vision.preprocess import (
    CorruptImageError,
    ImageError,
    ImageLimits,
    ImageProcessorConfig,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_data_url,
    load_image,
    open_image,
)


def reference_pixels(processor_kwargs: dict, data: bytes) -> torch.Tensor:
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(**processor_kwargs)
    # The raw decoded image, mode and all: conversion to RGB is part of what is compared.
    return processor(images=[Image.open(io.BytesIO(data))], return_tensors="pt")["pixel_values"][0]


@pytest.mark.parametrize("size, crop", [(32, (32, 32)), (36, (32, 32)), (40, (24, 32)), (224, (224, 224))])
def test_pixels_match_clip_image_processor(sample_images, size, crop):
    kwargs = {"size": {"shortest_edge": size}, "crop_size": {"height": crop[0], "width": crop[1]}}
    cfg = ImageProcessorConfig.from_dict(kwargs, image_size=crop[0])
    for i, data in enumerate(sample_images):
        ours = load_image(data, cfg)
        assert ours.dtype == torch.float32 and ours.shape == (3, *crop)
        torch.testing.assert_close(ours, reference_pixels(kwargs, data), rtol=0, atol=1e-6, msg=f"image {i}")


def test_processor_config_from_the_saved_checkpoint(llava_dir, sample_images):
    from transformers import CLIPImageProcessor

    cfg = ImageProcessorConfig.from_dir(llava_dir, image_size=32)
    assert (cfg.shortest_edge, cfg.crop_height, cfg.crop_width, cfg.resample) == (36, 32, 32, 3)
    processor = CLIPImageProcessor.from_pretrained(llava_dir)
    expected = processor(images=[Image.open(io.BytesIO(b)) for b in sample_images], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(torch.stack([load_image(b, cfg) for b in sample_images]), expected, rtol=0, atol=1e-6)


def test_fixed_size_resize_and_no_crop(sample_images):
    kwargs = {"size": {"height": 30, "width": 20}, "do_center_crop": False, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}
    cfg = ImageProcessorConfig.from_dict(kwargs, image_size=30)
    for data in sample_images[:3]:
        torch.testing.assert_close(load_image(data, cfg), reference_pixels(kwargs, data), rtol=0, atol=1e-6)


def test_unsupported_processor_configs_fail_at_load():
    with pytest.raises(ValueError, match="longest_edge"):
        ImageProcessorConfig.from_dict({"size": {"shortest_edge": 32, "longest_edge": 64}}, 32)
    with pytest.raises(ValueError, match="image_mean"):
        ImageProcessorConfig.from_dict({"image_mean": [0.5, 0.5]}, 32)


def test_gif_uses_its_first_frame():
    cfg = ImageProcessorConfig.from_dict({}, image_size=16)
    gif = encode_image(16, 16, "GIF", 1)
    first = load_image(gif, cfg)
    assert first.std() > 0.1  # the second frame is plain red
    assert not torch.allclose(first[1], first[1].flatten()[0].expand_as(first[1]))


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def test_data_urls_decode():
    data = encode_image(8, 8)
    assert decode_data_url(data_url(data)) == data
    wrapped = data_url(data)[:40] + "\n" + data_url(data)[40:]
    assert decode_data_url(wrapped) == data
    assert decode_data_url(data_url(data, "image/jpeg").replace("data:", "DATA:")) == data


@pytest.mark.parametrize(
    "url, error, message",
    [
        ("https://example.com/cat.png", UnsupportedImageError, "remote image URLs are disabled"),
        ("file:///etc/passwd", UnsupportedImageError, "expected a data:image"),
        ("data:image/png;base64", UnsupportedImageError, "expected a data:image"),
        ("data:text/plain;base64,aGVsbG8=", UnsupportedImageError, "not an image"),
        ("data:image/png,rawbytes", UnsupportedImageError, "base64"),
        ("data:image/png;base64,@@@@", CorruptImageError, "base64 data is corrupt"),
    ],
)
def test_bad_urls_are_refused(url, error, message):
    with pytest.raises(error, match=message):
        decode_data_url(url)


def test_remote_urls_are_not_fetched_even_when_allowed():
    with pytest.raises(UnsupportedImageError, match="fetching remote images is not supported"):
        decode_data_url("http://example.com/cat.png", allow_remote=True)


def test_oversized_data_url_is_refused_before_decoding():
    with pytest.raises(ImageTooLargeError, match="larger than 100 bytes"):
        decode_data_url(data_url(b"x" * 200), limits=ImageLimits(max_bytes=100))


def test_corrupt_and_unsupported_images_are_rejected():
    with pytest.raises(CorruptImageError, match="empty"):
        open_image(b"")
    with pytest.raises(CorruptImageError, match="cannot be decoded"):
        open_image(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(CorruptImageError):
        open_image(encode_image(64, 64, "PNG")[:80])  # truncated
    with pytest.raises(CorruptImageError):
        open_image(b"not an image at all")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="TIFF")
    with pytest.raises(UnsupportedImageError, match="'TIFF' is not supported"):
        open_image(buf.getvalue())
    assert all(issubclass(e, ValueError) and issubclass(e, ImageError) for e in (CorruptImageError, UnsupportedImageError, ImageTooLargeError))


def test_limits_are_checked_before_pixels_are_decoded():
    with pytest.raises(ImageTooLargeError, match="20x20 pixels; the limit is 100"):
        open_image(encode_image(20, 20), ImageLimits(max_pixels=100))
    with pytest.raises(ImageTooLargeError, match="bytes; the limit is 10"):
        open_image(encode_image(2, 2), ImageLimits(max_bytes=10))
    # A decompression bomb: 10k x 10k of one colour is ~100 KB of PNG, 300 MB of pixels.
    buf = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 1_000_000
    with pytest.raises(ImageTooLargeError, match="10000x10000"):
        open_image(buf.getvalue(), ImageLimits(max_pixels=50_000_000))


def test_extreme_aspect_ratio_cannot_blow_up_the_resize():
    cfg = ImageProcessorConfig.from_dict({}, image_size=224)
    with pytest.raises(ImageTooLargeError, match="aspect ratio"):
        load_image(encode_image(2000, 1), cfg, ImageLimits(max_pixels=100_000))
