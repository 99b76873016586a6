"""Image bytes to pixel tensors, exactly as the checkpoint's `preprocessor_config.json` says.

Decoding is where untrusted input enters, so every failure is an `ImageError` (a
`ValueError`) naming what is wrong, and sizes are bounded before pixels are decoded: a
decompression bomb (a few KB of PNG that inflate to gigabytes) never reaches memory.

The steps mirror `transformers`' CLIP image processor (its Pillow backend) operation for
operation — alpha composited onto white, Pillow resize of uint8 pixels, center crop with zero
padding, rescale in float64 then float32, normalise in float32 — so the embeddings the vision
pool returns are the ones the model was trained to read.
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
from typing import Any

import numpy as np
import torch
from PIL import Image

SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.DOTALL | re.IGNORECASE)


class ImageError(ValueError):
    """An image that cannot be served. `index` names the image within a batch, when known."""

    index: int | None = None


class CorruptImageError(ImageError):
    """The bytes are not a decodable image (truncated, garbage, bad base64)."""


class UnsupportedImageError(ImageError):
    """A real image in a format (or a URL scheme) this server does not take."""


class ImageTooLargeError(ImageError):
    """Over the byte or pixel limits: refused before decoding, so it cannot exhaust memory."""


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """Bounds on one image; the defaults suit photos and screenshots up to ~6k x 6k."""

    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError(f"ImageLimits: max_bytes and max_pixels must be >= 1, got {self.max_bytes}, {self.max_pixels}")


def _limits(limits: ImageLimits | None) -> ImageLimits:
    # Read the module constants at call time, so a deployment (or a test) can lower them.
    return limits or ImageLimits(MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS)


def decode_data_url(url: str, *, allow_remote: bool = False, limits: ImageLimits | None = None) -> bytes:
    """Bytes of a `data:image/<format>;base64,<data>` URL.

    Remote URLs are never fetched here, even with `allow_remote=True`: fetching belongs to a
    component with its own timeouts, size caps and SSRF rules, and must hand this module bytes.
    """
    limits = _limits(limits)
    if url[:8].lower().startswith(("http://", "https://")):
        if not allow_remote:
            raise UnsupportedImageError("image_url: remote image URLs are disabled; send the image as a data: URL")
        raise UnsupportedImageError(
            "image_url: fetching remote images is not supported by the image decoder; fetch the bytes first "
            "or send the image as a data: URL"
        )
    match = _DATA_URL.match(url)
    if match is None:
        raise UnsupportedImageError("image_url: expected a data:image/<format>;base64,<data> URL")
    mime, params = match.group("mime").lower(), match.group("params").lower().split(";")
    if not mime.startswith("image/"):
        raise UnsupportedImageError(f"image_url: data URL media type {mime!r} is not an image; expected data:image/<format>;base64,...")
    if "base64" not in params:
        raise UnsupportedImageError("image_url: data URL must be base64-encoded (data:image/<format>;base64,...)")
    data = re.sub(r"\s+", "", match.group("data"))  # tolerate line-wrapped base64
    if len(data) > (limits.max_bytes + 2) // 3 * 4:
        raise ImageTooLargeError(f"image_url: image larger than {limits.max_bytes} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise CorruptImageError("image_url: the base64 data is corrupt") from None


def open_image(data: bytes, limits: ImageLimits | None = None) -> Image.Image:
    """Decode and check an image (the first frame of an animation). Bounds are checked from
    the header, before the pixels are read. The image keeps its mode: see `to_rgb`."""
    limits = _limits(limits)
    if not data:
        raise CorruptImageError("image is empty")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is the authority; Pillow's warning threshold would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in SUPPORTED_FORMATS:
                raise UnsupportedImageError(f"image format {image.format!r} is not supported; use one of {sorted(SUPPORTED_FORMATS)}")
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ImageTooLargeError(f"image is {width}x{height} pixels; the limit is {limits.max_pixels} pixels")
            image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image is too large to decode safely: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's ways of saying "corrupt"
        raise CorruptImageError(f"image cannot be decoded: {exc}") from None
    if width == 0 or height == 0:
        raise CorruptImageError(f"image is {width}x{height} pixels")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white — what `transformers` does; a plain
    `convert("RGB")` would turn transparent pixels into whatever colour they hide."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def _size_dict(value: Any, field: str) -> dict[str, int]:
    if isinstance(value, int):
        return {"shortest_edge": value} if field == "size" else {"height": value, "width": value}
    if isinstance(value, dict):
        return value
    raise ValueError(f"preprocessor_config.json: {field} {value!r} is not supported")


@dataclass(frozen=True, slots=True)
class ImageProcessorConfig:
    """The CLIP image processor's settings. Resize is by shortest edge (aspect kept) or to a
    fixed height x width; other schemes (longest edge, tiling) raise at load time."""

    shortest_edge: int | None
    crop_height: int
    crop_width: int
    resize_height: int | None = None
    resize_width: int | None = None
    resample: int = Image.Resampling.BICUBIC
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        if self.do_resize and self.shortest_edge is None and not (self.resize_height and self.resize_width):
            raise ValueError("preprocessor_config.json: size needs shortest_edge, or height and width")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"preprocessor_config.json: image_mean/image_std must be 3 values (std > 0), got {self.image_mean}, {self.image_std}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], image_size: int) -> ImageProcessorConfig:
        size = _size_dict(raw.get("size", {"shortest_edge": image_size}), "size")
        crop = _size_dict(raw.get("crop_size", {"height": image_size, "width": image_size}), "crop_size")
        if "shortest_edge" not in size and not ("height" in size and "width" in size):
            raise ValueError(f"preprocessor_config.json: size {size!r} is not supported (shortest_edge, or height and width)")
        if size.get("longest_edge") is not None:
            raise ValueError(f"preprocessor_config.json: size {size!r} is not supported (longest_edge)")
        mean, std = raw.get("image_mean", CLIP_MEAN), raw.get("image_std", CLIP_STD)
        return cls(
            shortest_edge=size.get("shortest_edge"),
            crop_height=int(crop["height"]),
            crop_width=int(crop["width"]),
            resize_height=size.get("height"),
            resize_width=size.get("width"),
            resample=int(raw.get("resample", Image.Resampling.BICUBIC)),
            do_resize=bool(raw.get("do_resize", True)),
            do_center_crop=bool(raw.get("do_center_crop", True)),
            do_rescale=bool(raw.get("do_rescale", True)),
            rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
            do_normalize=bool(raw.get("do_normalize", True)),
            image_mean=tuple(mean) if isinstance(mean, (list, tuple)) else (float(mean),) * 3,
            image_std=tuple(std) if isinstance(std, (list, tuple)) else (float(std),) * 3,
        )

    @classmethod
    def from_dir(cls, path: str | Path, image_size: int) -> ImageProcessorConfig:
        """Read `preprocessor_config.json`; without one, CLIP's defaults at the tower's size."""
        file = Path(path) / "preprocessor_config.json"
        return cls.from_dict(json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}, image_size)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resize — the rule of `transformers.get_resize_output_image_size`."""
        if not self.do_resize:
            return width, height
        if self.shortest_edge is None:
            return int(self.resize_width), int(self.resize_height)
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)


def _center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W, C] center crop; an image smaller than the crop is zero-padded first, centred
    the way `transformers.image_transforms.center_crop` centres it."""
    h, w = pixels.shape[:2]
    if h < height or w < width:
        new_h, new_w = max(h, height), max(w, width)
        top_pad, left_pad = -(-(new_h - h) // 2), -(-(new_w - w) // 2)
        padded = np.zeros((new_h, new_w, pixels.shape[2]), dtype=pixels.dtype)
        padded[top_pad : top_pad + h, left_pad : left_pad + w] = pixels
        pixels, h, w = padded, new_h, new_w
    top, left = (h - height) // 2, (w - width) // 2
    return pixels[top : top + height, left : left + width]


def preprocess(image: Image.Image, cfg: ImageProcessorConfig, limits: ImageLimits | None = None) -> torch.Tensor:
    """Resize, center-crop, rescale and normalise: float32 [3, H, W]."""
    new_width, new_height = cfg.resized_size(*image.size)
    # An extreme aspect ratio (1 x 40M pixels) would make the resized image itself a bomb;
    # checked before the RGB conversion, which would already cost 3 bytes a pixel.
    if new_width * new_height > _limits(limits).max_pixels:
        raise ImageTooLargeError(
            f"image of {image.width}x{image.height} would resize to {new_width}x{new_height} pixels, over the limit of "
            f"{_limits(limits).max_pixels} (aspect ratio too extreme)"
        )
    image = to_rgb(image)
    if (new_width, new_height) != image.size:
        image = image.resize((new_width, new_height), resample=cfg.resample)
    pixels = np.asarray(image)  # uint8 [H, W, 3]
    if cfg.do_center_crop:
        pixels = _center_crop(pixels, cfg.crop_height, cfg.crop_width)
    pixels = (pixels.astype(np.float64) * cfg.rescale_factor if cfg.do_rescale else pixels).astype(np.float32)
    if cfg.do_normalize:
        pixels = (pixels - np.asarray(cfg.image_mean, dtype=np.float32)) / np.asarray(cfg.image_std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def load_image(data: bytes, cfg: ImageProcessorConfig, limits: ImageLimits | None = None) -> torch.Tensor:
    """Bytes straight to the pixel tensor the vision tower takes."""
    return preprocess(open_image(data, limits), cfg, limits)
