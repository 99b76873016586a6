"""The vision tower and projector against `transformers`' own LLaVA; batching and the cache."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from tiny_checkpoints import build_tiny_llava, image_bytes

from workers.vision.encoder import VisionEncoder
from workers.vision.preprocess import ImageError, open_image, preprocess

IMAGES = [image_bytes(40, 50, "PNG", 1), image_bytes(64, 33, "JPEG", 2), image_bytes(100, 100, "WEBP", 3),
          image_bytes(32, 32, "GIF", 4), image_bytes(77, 45, "BMP", 5)]


def reference(path, images: list[bytes]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    pixels = processor(images=[Image.open(io.BytesIO(b)).convert("RGB") for b in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    features = out.pooler_output if hasattr(out, "pooler_output") else out
    return pixels, [torch.as_tensor(f) for f in features]


@pytest.mark.parametrize("count", [1, 2, 5])
def test_embeddings_match_transformers(tiny_llava_dir, count):
    images = IMAGES[:count]
    pixels, expected = reference(tiny_llava_dir, images)
    encoder = VisionEncoder.from_pretrained(tiny_llava_dir)
    ours = torch.stack([preprocess(open_image(b), encoder.processor) for b in images])
    torch.testing.assert_close(ours, pixels, rtol=1e-4, atol=1e-5)
    embeds = encoder.encode(images)
    assert len(embeds) == count and embeds[0].shape == (encoder.num_image_tokens, 64)
    for got, want in zip(embeds, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy, layer", [("full", -2), ("default", -1), ("default", [-3, -1])])
def test_feature_layer_and_strategy_follow_the_config(tmp_path, strategy, layer):
    path = build_tiny_llava(tmp_path / "m", strategy=strategy, feature_layer=layer)
    _, expected = reference(path, IMAGES[:2])
    encoder = VisionEncoder.from_pretrained(path)
    assert encoder.num_image_tokens == 16 + (strategy == "full")
    for got, want in zip(encoder.encode(IMAGES[:2]), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_repeated_image_is_encoded_once(tiny_llava_dir):
    encoder = VisionEncoder.from_pretrained(tiny_llava_dir, cache_size=2)
    first = encoder.encode([IMAGES[0]])[0]
    assert (encoder.cache.hits, encoder.cache.misses) == (0, 1)
    again = encoder.encode([IMAGES[0]])[0]
    assert encoder.cache.hits == 1
    torch.testing.assert_close(first, again)
    encoder.encode([IMAGES[1], IMAGES[2]])  # capacity 2: the first image is evicted
    encoder.encode([IMAGES[0]])
    assert encoder.cache.hits == 1 and len(encoder.cache) == 2


def test_one_bad_image_fails_the_call_with_its_index_and_the_encoder_keeps_working(tiny_llava_dir):
    encoder = VisionEncoder.from_pretrained(tiny_llava_dir)
    with pytest.raises(ImageError, match=r"images\[1\]"):
        encoder.encode([IMAGES[0], b"not an image"])
    assert len(encoder.encode([IMAGES[0], IMAGES[1]])) == 2
