from workers.engine.block_manager import BlockManager, prefix_block_hashes
from workers.engine.sampling import SamplingParams
from workers.engine.sequence import Sequence


def seq(rid: str, tokens: list[int], arrival: int = 0) -> Sequence:
    return Sequence(rid, list(tokens), SamplingParams(), arrival)


def test_allocation_grows_block_table_and_free_returns_every_block():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    s = seq("a", range(10))
    assert bm.blocks_needed(s, 10) == 3
    assert bm.allocate(s, 10)
    assert len(s.block_table) == 3 and bm.num_free_blocks == 5
    s.num_computed_tokens = 10
    assert bm.allocate(s, 2)  # tokens 10, 11 still fit in the third block
    assert len(s.block_table) == 3
    assert bm.allocate(s, 3)
    assert len(s.block_table) == 4
    bm.free(s)
    assert bm.num_free_blocks == 8 and s.block_table == []


def test_allocation_fails_without_partial_change_when_short():
    bm = BlockManager(num_blocks=2, block_size=4, enable_prefix_caching=False)
    s = seq("a", range(12))
    assert not bm.can_allocate(s, 12)
    assert not bm.allocate(s, 12)
    assert s.block_table == [] and bm.num_free_blocks == 2


def test_prefix_sharing_reuses_committed_blocks_and_counts_references():
    bm = BlockManager(num_blocks=8, block_size=4)
    first = seq("a", range(10))
    bm.allocate(first, 10)
    first.num_computed_tokens = 10
    bm.commit_full_blocks(first)
    assert len(bm.cached_block_hashes()) == 2  # two full blocks of four

    second = seq("b", list(range(8)) + [99, 98, 97])
    matched = bm.match_prefix(second)
    assert matched == 8 and second.block_table == first.block_table[:2]
    assert bm.blocks[first.block_table[0]].ref_count == 2
    bm.free(first)
    assert bm.blocks[second.block_table[0]].ref_count == 1
    bm.free(second)
    assert bm.num_free_blocks == 8


def test_match_leaves_at_least_one_token_to_compute():
    bm = BlockManager(num_blocks=8, block_size=4)
    first = seq("a", range(8))
    bm.allocate(first, 8)
    first.num_computed_tokens = 8
    bm.commit_full_blocks(first)
    same = seq("b", range(8))
    assert bm.match_prefix(same) == 4  # the last block is recomputed to get logits


def test_freed_blocks_stay_cached_until_reused_and_then_lose_their_hash():
    bm = BlockManager(num_blocks=2, block_size=4)
    a = seq("a", range(5))
    bm.allocate(a, 5)
    a.num_computed_tokens = 5
    bm.commit_full_blocks(a)
    bm.free(a)
    assert len(bm.cached_block_hashes()) == 1
    b = seq("b", range(100, 108))
    assert bm.allocate(b, 8)  # needs both blocks, so the cached one is evicted
    assert bm.cached_block_hashes() == frozenset()
    c = seq("c", range(5))
    assert bm.match_prefix(c) == 0


def test_images_with_the_same_placeholders_do_not_share_blocks():
    from workers.engine.sequence import MultimodalSpan

    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq("a", [7] * 9)
    a.mm_spans = [MultimodalSpan(0, 8, "image-A")]
    bm.allocate(a, 9)
    a.num_computed_tokens = 9
    bm.commit_full_blocks(a)
    b = seq("b", [7] * 9)
    b.mm_spans = [MultimodalSpan(0, 8, "image-B")]
    assert bm.match_prefix(b) == 0
    c = seq("c", [7] * 9)
    c.mm_spans = [MultimodalSpan(0, 8, "image-A")]
    assert bm.match_prefix(c) == 8


def test_prefix_block_hashes_match_what_the_cache_registers():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq("a", range(13))
    bm.allocate(a, 13)
    a.num_computed_tokens = 13
    bm.commit_full_blocks(a)
    assert frozenset(prefix_block_hashes(list(range(13)), 4)) == bm.cached_block_hashes()
