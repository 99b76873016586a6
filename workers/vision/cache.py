"""A bounded LRU cache of image embeddings keyed by content, so a repeated image (a logo, a
screenshot sent again with each follow-up question of a conversation) is encoded once.

Keys are sha256 of the model's identity and the image bytes: the same bytes under another
checkpoint are another embedding. Values are treated as read-only by every caller.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch


def content_hash(data: bytes) -> str:
    """sha256 of the bytes alone: the image's name in prompts and prefix caches."""
    return hashlib.sha256(data).hexdigest()


def embedding_key(model_identity: str, data: bytes) -> str:
    """sha256 over the model identity, a separator, and the bytes (the separator keeps
    identity "ab" + bytes "c" apart from identity "a" + bytes "bc")."""
    digest = hashlib.sha256(model_identity.encode())
    digest.update(b"\0")
    digest.update(data)
    return digest.hexdigest()


class EmbeddingCache:
    """LRU by entry count; `capacity` 0 turns caching off (lookups still count misses)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"cache_size: must be >= 0, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # replicas may encode from an executor thread
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def record_hit(self) -> None:
        """A lookup served without the cache's help but without encoding either (a repeat
        within one call): counted as a hit, so the hit rate says how much encoding was saved."""
        with self._lock:
            self.hits += 1

    def put(self, key: str, value: torch.Tensor) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
                self.evictions += 1

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
