"""Image bytes to pixel tensors, as the checkpoint's `preprocessor_config.json` says.

Decoding is where untrusted input enters, so every failure is an `ImageError` (a
`ValueError`) naming what is wrong, and sizes are bounded before pixels are decoded
(a decompression bomb never reaches memory).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,(?P<data>.*)$", re.DOTALL)


class ImageError(ValueError):
    """An image that cannot be served: corrupt, unsupported, too large, or not allowed."""


def decode_data_url(url: str, *, allow_remote: bool = False) -> bytes:
    """Bytes of a `data:image/...;base64,` URL. Remote URLs are never fetched here."""
    if url.startswith(("http://", "https://")):
        if not allow_remote:
            raise ImageError("image_url: remote image URLs are disabled; send the image as a data: URL")
        raise ImageError("image_url: fetching remote images is not supported; send the image as a data: URL")
    match = _DATA_URL.match(url)
    if match is None:
        raise ImageError("image_url: expected a data:image/<format>;base64,<data> URL")
    data = match.group("data")
    if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ImageError(f"image_url: image larger than {MAX_IMAGE_BYTES} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("image_url: the base64 data is corrupt") from None


@dataclass(frozen=True, slots=True)
class ImageProcessorConfig:
    shortest_edge: int
    crop_height: int
    crop_width: int
    resample: int = Image.Resampling.BICUBIC
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    do_center_crop: bool = True

    @classmethod
    def from_dir(cls, path: str | Path, image_size: int) -> ImageProcessorConfig:
        """Read `preprocessor_config.json`; without one, CLIP's defaults at the tower's size."""
        file = Path(path) / "preprocessor_config.json"
        raw = json.loads(file.read_text()) if file.is_file() else {}
        size = raw.get("size", {"shortest_edge": image_size})
        crop = raw.get("crop_size", {"height": image_size, "width": image_size})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        shortest = size.get("shortest_edge") if isinstance(size, dict) else size
        if shortest is None:
            raise ValueError(f"preprocessor_config.json: size {size!r} is not supported (shortest_edge expected)")
        return cls(
            shortest_edge=int(shortest),
            crop_height=int(crop["height"]),
            crop_width=int(crop["width"]),
            resample=int(raw.get("resample", Image.Resampling.BICUBIC)),
            rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
            image_mean=tuple(raw.get("image_mean", cls.image_mean)),
            image_std=tuple(raw.get("image_std", cls.image_std)),
            do_center_crop=bool(raw.get("do_center_crop", True)),
        )


def open_image(data: bytes) -> Image.Image:
    """Decode and check an image; RGB out. Bounds are checked before the pixels are read."""
    if not data:
        raise ImageError("image is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"image is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in SUPPORTED_FORMATS:
                raise ImageError(f"image format {image.format!r} is not supported; use one of {sorted(SUPPORTED_FORMATS)}")
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(f"image is {width}x{height} pixels; the limit is {MAX_IMAGE_PIXELS} pixels")
            image.seek(0)  # the first frame of an animation
            image.load()
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"image cannot be decoded: {exc}") from None
    return image.convert("RGB")


def preprocess(image: Image.Image, cfg: ImageProcessorConfig) -> torch.Tensor:
    """Resize the shortest edge, center-crop, rescale and normalise: float32 [3, H, W]."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = cfg.shortest_edge, int(cfg.shortest_edge * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    pixels = np.asarray(image.resize(size, resample=cfg.resample), dtype=np.float32)  # [H, W, 3]
    if cfg.do_center_crop:
        h, w = pixels.shape[:2]
        if h < cfg.crop_height or w < cfg.crop_width:
            raise ImageError(f"image resized to {w}x{h} is smaller than the crop {cfg.crop_width}x{cfg.crop_height}")
        top, left = (h - cfg.crop_height) // 2, (w - cfg.crop_width) // 2
        pixels = pixels[top : top + cfg.crop_height, left : left + cfg.crop_width]
    pixels = pixels * np.float32(cfg.rescale_factor)
    pixels = (pixels - np.asarray(cfg.image_mean, dtype=np.float32)) / np.asarray(cfg.image_std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
