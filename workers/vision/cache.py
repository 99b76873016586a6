"""A bounded LRU cache of image embeddings keyed by content, so a repeated image (a logo, a
screenshot sent again with a follow-up question) is encoded once."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EmbeddingCache:
    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"cache_size: must be >= 0, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any | None:
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        if self.capacity == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
