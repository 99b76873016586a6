"""A KV block manager for replicas without prefix caching that counts blocks instead of
keeping an object per block, with the live manager's behaviour block id for block id.

The live `workers.engine.block_manager.BlockManager` builds a `Block` for every block of the
cache and an ordered free list of them: at 1,024 simulated replicas of 2,048 blocks that is two
million objects, seconds to build and hundreds of megabytes held for bookkeeping the simulator
never reads. Without prefix caching nothing needs them: no block is shared (every reference
count is 1), no hash is kept, and a freed block goes back to the end of the free list.

The free list here is therefore the never-used blocks, handed out in id order by a counter,
followed by the freed ones in the order they were freed: the same ids the live manager hands
out, in the same order, so block tables, free counts and every scheduling decision come out
equal (`tests/simulator/test_counting_blocks.py` runs both under the live scheduler and compares).
With prefix caching on, `block_manager_for` returns the live manager itself.
"""

from __future__ import annotations

from collections import deque

from workers.engine.block_manager import BlockManager
from workers.engine.sequence import Sequence


class CountingBlockManager:
    """`BlockManager(num_blocks, block_size, enable_prefix_caching=False)`, by counting."""

    enable_prefix_caching = False

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self._num_blocks = num_blocks
        self._fresh = 0  # blocks [_fresh, num_blocks) have never been handed out
        self._freed: deque[int] = deque()  # then these, oldest freed first

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self._num_blocks - self._fresh + len(self._freed)

    def cached_block_hashes(self) -> frozenset[int]:
        return frozenset()

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grow the block table to hold `num_new_tokens` more; False (and no change) if short."""
        needed = -(-(seq.num_computed_tokens + num_new_tokens) // self.block_size) - len(seq.block_table)
        if needed <= 0:
            return True
        fresh_left = self._num_blocks - self._fresh
        if needed > fresh_left + len(self._freed):
            return False
        take = min(needed, fresh_left)
        table = seq.block_table
        table.extend(range(self._fresh, self._fresh + take))
        self._fresh += take
        for _ in range(needed - take):
            table.append(self._freed.popleft())
        return True

    def match_prefix(self, seq: Sequence) -> int:
        return 0

    def commit_full_blocks(self, seq: Sequence) -> None:
        return None

    def free(self, seq: Sequence) -> None:
        """Release a sequence's blocks; the tail is freed first so it is also reused first."""
        self._freed.extend(reversed(seq.block_table))
        seq.block_table.clear()


def block_manager_for(num_blocks: int, block_size: int, enable_prefix_caching: bool) -> BlockManager | CountingBlockManager:
    """The counting manager where prefix caching is off, the live one where it is on."""
    if enable_prefix_caching:
        return BlockManager(num_blocks, block_size, True)
    return CountingBlockManager(num_blocks, block_size)
