"""The vision tower and projector against `transformers`' own LLaVA; batching; bad input."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from vision_fixtures import TEXT_HIDDEN

from workers.vision.encoder import VisionEncoder
from workers.vision.preprocess import CorruptImageError, ImageError, ImageTooLargeError, ImageLimits


def reference(path, images: list[bytes]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """transformers' pixels and per-image features (`get_image_features(...).pooler_output`)."""
    from transformers import AutoImageProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    pixels = processor(images=[Image.open(io.BytesIO(b)) for b in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        # output_hidden_states explicitly: transformers 5 infers it from `if vision_feature_layer`, so layer 0 got none.
        out = model.get_image_features(pixel_values=pixels, output_hidden_states=True)
    features = out.pooler_output if hasattr(out, "pooler_output") else out
    return pixels, [torch.as_tensor(f) for f in features]


@pytest.mark.parametrize("count", [1, 2, 5])
def test_embeddings_match_transformers(llava_dir, sample_images, count):
    images = sample_images[-count:] if count == 5 else sample_images[:count]
    pixels, expected = reference(llava_dir, images)
    encoder = VisionEncoder.from_pretrained(llava_dir, max_batch=2)  # 5 images: chunks of 2, 2, 1
    torch.testing.assert_close(torch.stack(encoder.preprocess(images)), pixels, rtol=0, atol=1e-6)
    embeds = encoder.encode(images)
    assert len(embeds) == count
    for got, want in zip(embeds, expected):
        assert got.shape == (encoder.num_image_tokens, TEXT_HIDDEN) == (16, TEXT_HIDDEN) and got.dtype == torch.float32
        assert want.abs().mean() > 0.1  # the comparison is meaningful: embeddings are O(1)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy, layer", [("full", -2), ("full", [-3, -1]), ("default", -1), ("default", 0), ("default", [-3, -2, 2])])
def test_feature_layer_and_strategy_follow_the_config(llava_factory, sample_images, strategy, layer):
    path = llava_factory(strategy=strategy, feature_layer=layer, image_size=64)
    images = sample_images[:3]
    _, expected = reference(path, images)
    encoder = VisionEncoder.from_pretrained(path)
    assert encoder.num_image_tokens == 64 + (strategy == "full")
    for got, want in zip(encoder.encode(images), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_batched_equals_one_by_one(llava_dir, sample_images):
    encoder = VisionEncoder.from_pretrained(llava_dir, cache_size=0, max_batch=16)
    together = encoder.encode(sample_images)
    for data, embed in zip(sample_images, together):
        torch.testing.assert_close(encoder.encode([data])[0], embed, rtol=1e-5, atol=1e-6)


def test_facts_from_the_config(llava_dir):
    encoder = VisionEncoder.from_pretrained(llava_dir)
    assert encoder.image_token_id == 7
    assert encoder.hidden_size == TEXT_HIDDEN
    assert encoder.facts.feature_indices == (1,)  # -2 of [embeddings, layer 1, layer 2]
    assert len(encoder.tower.encoder.layers) == 1  # layer 2 is never read, so never built
    assert encoder.encode([]) == []


def test_one_bad_image_fails_the_call_with_its_index_and_nothing_else(llava_dir, sample_images):
    encoder = VisionEncoder.from_pretrained(llava_dir)
    with pytest.raises(CorruptImageError, match=r"^images\[2\]: image cannot be decoded") as info:
        encoder.encode([sample_images[0], sample_images[1], b"not an image", sample_images[3]])
    assert info.value.index == 2
    assert len(encoder.cache) == 0  # nothing was encoded, nothing cached
    good = encoder.encode([sample_images[0], sample_images[1]])
    torch.testing.assert_close(good[1], VisionEncoder.from_pretrained(llava_dir).encode([sample_images[1]])[0])


def test_index_counts_cached_images_too(llava_dir, sample_images):
    encoder = VisionEncoder.from_pretrained(llava_dir)
    encoder.encode([sample_images[0]])
    with pytest.raises(ImageError, match=r"images\[3\]: expected image bytes, got str") as info:
        encoder.encode([sample_images[0], sample_images[1], sample_images[0], "data:image/png;base64,AAAA"])
    assert info.value.index == 3 and isinstance(info.value, ValueError)


def test_limits_apply_per_encoder(llava_dir, sample_images):
    encoder = VisionEncoder.from_pretrained(llava_dir, limits=ImageLimits(max_pixels=5000))
    with pytest.raises(ImageTooLargeError, match=r"images\[1\]: image is 100x100 pixels; the limit is 5000"):
        encoder.encode([sample_images[0], sample_images[2]])


def test_pixels_of_the_wrong_size_are_refused(llava_dir):
    encoder = VisionEncoder.from_pretrained(llava_dir)
    with pytest.raises(ValueError, match=r"expected \[batch, 3, 32, 32\], got \[1, 3, 64, 64\]"):
        encoder.encode_pixels(torch.zeros(1, 3, 64, 64))
