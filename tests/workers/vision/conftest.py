"""Session fixtures for the vision tests; the builders live in `vision_fixtures.py`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from vision_fixtures import build_llava, encode_image


@pytest.fixture(scope="session")
def llava_factory(tmp_path_factory) -> Callable[..., Path]:
    """`llava_factory(**options)`: a checkpoint directory, built once per distinct options."""
    built: dict[tuple, Path] = {}

    def make(**options) -> Path:
        key = tuple(sorted((k, str(v)) for k, v in options.items()))
        if key not in built:
            built[key] = build_llava(tmp_path_factory.mktemp("llava"), **options)
        return built[key]

    return make


@pytest.fixture(scope="session")
def llava_dir(llava_factory) -> Path:
    """The default: feature layer -2, "default" strategy, 32 px crop after a 36 px resize."""
    return llava_factory(shortest_edge=36)


@pytest.fixture(scope="session")
def sample_images() -> list[bytes]:
    """Different sizes, aspect ratios, formats and modes; some smaller than the crop."""
    return [
        encode_image(40, 50, "PNG", 1),
        encode_image(64, 33, "JPEG", 2),
        encode_image(100, 100, "WEBP", 3),
        encode_image(32, 32, "GIF", 4),
        encode_image(77, 45, "BMP", 5),
        encode_image(50, 30, "PNG", 6, mode="RGBA"),
        encode_image(20, 60, "PNG", 7, mode="L"),
        encode_image(5, 3, "PNG", 8, mode="LA"),
    ]
