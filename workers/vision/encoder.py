"""`VisionEncoder`: images in, one embedding tensor per image out — the vision pool's work
(ModServe's image-encoding stage, scaled and batched apart from prefill and decode).

All images of a call are decoded and checked before any is encoded: one bad image fails the
call with its index, and never leaves a half-done batch or a wrong entry in the cache.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from workers.vision.cache import EmbeddingCache, embedding_key
from workers.vision.clip import VisionTower
from workers.vision.loader import LlavaVisionFacts, has_vision_tower, load_llava_vision, model_identity
from workers.vision.preprocess import ImageError, ImageLimits, ImageProcessorConfig, load_image
from workers.vision.projector import Projector, select_features

__all__ = ["VisionEncoder", "LlavaVisionFacts", "has_vision_tower"]

log = logging.getLogger(__name__)


class VisionEncoder:
    def __init__(
        self,
        facts: LlavaVisionFacts,
        processor: ImageProcessorConfig,
        tower: VisionTower,
        projector: Projector,
        *,
        identity: str,
        cache_size: int = 256,
        max_batch: int = 16,
        limits: ImageLimits | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch: must be >= 1, got {max_batch}")
        self.facts = facts
        self.processor = processor
        self.tower = tower
        self.projector = projector
        self.identity = identity
        self.cache = EmbeddingCache(cache_size)
        self.max_batch = max_batch
        self.limits = limits

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, cache_size: int = 256, max_batch: int = 16, limits: ImageLimits | None = None
    ) -> VisionEncoder:
        """Load a LLaVA checkpoint's vision half (float32, CPU)."""
        facts, tower, projector = load_llava_vision(path)
        processor = ImageProcessorConfig.from_dir(path, facts.vision.image_size)
        return cls(facts, processor, tower, projector, identity=model_identity(path), cache_size=cache_size, max_batch=max_batch, limits=limits)

    @property
    def num_image_tokens(self) -> int:
        """Placeholder tokens one image takes in the prompt (rows of each embedding)."""
        return self.facts.num_image_tokens

    @property
    def image_token_id(self) -> int:
        return self.facts.image_token_id

    @property
    def hidden_size(self) -> int:
        """Width of each embedding row: the language model's hidden size."""
        return self.projector.linear_2.out_features

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[batch, 3, H, W] preprocessed pixels to [batch, num_image_tokens, hidden_size], in one pass."""
        states = self.tower.hidden_states(pixels, self.facts.feature_indices)
        return self.projector(select_features(states, self.facts.select_strategy))

    def preprocess(self, images: Sequence[bytes], indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Pixel tensors for every image, or the first failure as `images[i]: ...` with `.index`
        (i from `indices` when the images are a subset of a caller's list)."""
        pixels = []
        for position, data in enumerate(images):
            i = indices[position] if indices is not None else position
            try:
                if not isinstance(data, (bytes, bytearray, memoryview)):
                    raise ImageError(f"expected image bytes, got {type(data).__name__}")
                pixels.append(load_image(bytes(data), self.processor, self.limits))
            except ImageError as exc:
                error = type(exc)(f"images[{i}]: {exc}")
                error.index = i
                raise error from None
        return pixels

    def encode(self, images: Sequence[bytes]) -> list[torch.Tensor]:
        """One [num_image_tokens, hidden_size] float32 tensor per image, in order. Cached and
        repeated images are encoded once; the rest in forward passes of up to `max_batch`."""
        keys = [embedding_key(self.identity, bytes(b)) if isinstance(b, (bytes, bytearray, memoryview)) else f"#{i}" for i, b in enumerate(images)]
        found: dict[str, torch.Tensor] = {}
        todo: dict[str, int] = {}  # key -> index of its first occurrence, for images to encode
        for i, key in enumerate(keys):
            if key in found or key in todo:
                self.cache.record_hit()  # a repeat within the call is encoded once, like a cached one
                continue
            cached = self.cache.get(key)
            if cached is not None:
                found[key] = cached
            else:
                todo[key] = i
        pending, indices = list(todo), list(todo.values())
        pixels = self.preprocess([images[i] for i in indices], indices)
        for start in range(0, len(pending), self.max_batch):
            chunk = pending[start : start + self.max_batch]
            embeds = self.encode_pixels(torch.stack(pixels[start : start + len(chunk)]))
            for key, embed in zip(chunk, embeds):
                found[key] = embed.clone()  # its own storage: the batch tensor can be freed
                self.cache.put(key, found[key])
        if todo:
            log.debug("encoded images", extra={"images": len(images), "encoded": len(todo), "cache_hits": self.cache.hits})
        return [found[key] for key in keys]
