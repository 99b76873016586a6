"""Paged KV-cache accounting: fixed-size blocks, block tables, reference counts, prefix hashes.

It knows blocks and hashes and nothing about models or tensors; the model runner turns block
tables into cache slots. Freed blocks keep their content hash until they are reused, so a later
request with the same prefix finds them again (least recently freed blocks are reused first).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from workers.engine.sequence import Sequence


def hash_block(parent_hash: int | None, token_ids: Seq[int], extra: tuple[str, ...] = ()) -> int:
    """A 64-bit chained hash of one full block, stable across processes (no Python `hash`).

    Chaining on the parent makes a block's hash stand for the whole prefix up to its end;
    `extra` carries the content hashes of images whose placeholder tokens lie in the block.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update((parent_hash or 0).to_bytes(8, "little", signed=False))
    h.update(array("q", token_ids).tobytes())
    for key in extra:
        h.update(key.encode())
    return int.from_bytes(h.digest(), "little")


def prefix_block_hashes(token_ids: Seq[int], block_size: int) -> list[int]:
    """Hashes of the full blocks of a text prompt, as a replica's prefix cache would key them."""
    hashes: list[int] = []
    parent = None
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash_block(parent, token_ids[start : start + block_size])
        hashes.append(parent)
    return hashes


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[int, int] = {}  # block hash -> block id
        self._hashes: dict[str, list[int]] = {}  # request id -> hashes of its committed full blocks

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def cached_block_hashes(self) -> frozenset[int]:
        """Prefix hashes this cache can serve now (for prefix-affinity routing)."""
        return frozenset(self._cached)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= len(self._free)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grow the block table to hold `num_new_tokens` more; False (and no change) if short."""
        needed = self.blocks_needed(seq, num_new_tokens)
        if needed > len(self._free):
            return False
        for _ in range(needed):
            seq.block_table.append(self._take_free_block())
        return True

    def match_prefix(self, seq: Sequence) -> int:
        """Reuse cached blocks for the start of a fresh sequence; returns the tokens covered.

        At least one token is always left to compute, because the step that computes it is the
        one that produces the logits of the next token.
        """
        if not self.enable_prefix_caching or seq.block_table or seq.num_computed_tokens:
            return 0
        hashes = self._hashes.setdefault(seq.request_id, [])
        bs = self.block_size
        parent = None
        while (len(hashes) + 1) * bs < seq.num_tokens:
            start = len(hashes) * bs
            h = hash_block(parent, seq.token_ids[start : start + bs], seq.block_extra_key(start, start + bs))
            block_id = self._cached.get(h)
            if block_id is None:
                break
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            hashes.append(h)
            parent = h
        seq.num_computed_tokens = len(hashes) * bs
        return seq.num_computed_tokens

    def commit_full_blocks(self, seq: Sequence) -> None:
        """Register the hashes of blocks whose tokens are now all computed."""
        if not self.enable_prefix_caching:
            return
        hashes = self._hashes.setdefault(seq.request_id, [])
        bs = self.block_size
        parent = hashes[-1] if hashes else None
        while (len(hashes) + 1) * bs <= seq.num_computed_tokens:
            start = len(hashes) * bs
            h = hash_block(parent, seq.token_ids[start : start + bs], seq.block_extra_key(start, start + bs))
            block = self.blocks[seq.block_table[len(hashes)]]
            if h not in self._cached and block.block_hash is None:
                block.block_hash = h
                self._cached[h] = block.block_id
            hashes.append(h)
            parent = h

    def free(self, seq: Sequence) -> None:
        """Release a sequence's blocks; the tail is freed first so it is also reused first."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.block_table.clear()
        self._hashes.pop(seq.request_id, None)

    def _take_free_block(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.block_hash is not None:
            if self._cached.get(block.block_hash) == block_id:
                del self._cached[block.block_hash]
            block.block_hash = None
        block.ref_count = 1
        return block_id
