"""The content-hash embedding cache: a repeated image is encoded once; LRU at capacity."""

from __future__ import annotations

import hashlib

import pytest
import torch

from workers.vision.cache import EmbeddingCache, content_hash, embedding_key
from workers.vision.encoder import VisionEncoder


def test_lru_evicts_the_least_recently_used():
    cache = EmbeddingCache(2)
    a, b, c = (torch.full((2,), float(i)) for i in range(3))
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a  # "a" is now the most recent
    cache.put("c", c)
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.get("b") is None
    assert (cache.hits, cache.misses, cache.evictions, len(cache)) == (1, 1, 1, 2)
    assert cache.hit_rate == 0.5


def test_capacity_zero_caches_nothing_and_negative_is_refused():
    cache = EmbeddingCache(0)
    cache.put("a", torch.zeros(1))
    assert cache.get("a") is None and len(cache) == 0
    with pytest.raises(ValueError, match="cache_size"):
        EmbeddingCache(-1)


def test_keys_depend_on_model_and_bytes():
    assert embedding_key("m1", b"img") != embedding_key("m2", b"img")
    assert embedding_key("ab", b"c") != embedding_key("a", b"bc")
    assert embedding_key("m1", b"img") == embedding_key("m1", b"img")
    assert content_hash(b"img") == hashlib.sha256(b"img").hexdigest()  # the bytes alone: the engine's prefix-cache name


def test_a_repeated_image_is_encoded_once(llava_dir, sample_images, monkeypatch):
    encoder = VisionEncoder.from_pretrained(llava_dir, cache_size=2)
    passes = []
    real = encoder.encode_pixels
    monkeypatch.setattr(encoder, "encode_pixels", lambda pixels: passes.append(len(pixels)) or real(pixels))

    first = encoder.encode([sample_images[0]])[0]
    assert (encoder.cache.hits, encoder.cache.misses) == (0, 1)
    again = encoder.encode([sample_images[0]])[0]
    assert (encoder.cache.hits, encoder.cache.misses) == (1, 1)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert passes == [1]  # the second call ran no forward pass

    # Within one call too: the same bytes twice are encoded once and returned twice.
    twice = encoder.encode([sample_images[1], sample_images[1]])
    assert passes == [1, 1] and torch.equal(twice[0], twice[1])

    encoder.encode([sample_images[2]])  # capacity 2: image 0 (least recent) is evicted
    assert encoder.cache.evictions == 1
    encoder.encode([sample_images[0]])
    assert passes == [1, 1, 1, 1]


def test_cache_keys_belong_to_the_model(llava_factory, llava_dir, sample_images):
    one = VisionEncoder.from_pretrained(llava_dir)
    other = VisionEncoder.from_pretrained(llava_factory(seed=1, shortest_edge=36))
    assert one.identity != other.identity
    assert not torch.allclose(one.encode([sample_images[0]])[0], other.encode([sample_images[0]])[0])
