"""The replica-choice policy over hand-built loads: no Ray."""

from __future__ import annotations

import pytest

from router.replica_choice import ReplicaLoad, matched_prefix_blocks, rank_for_decode, rank_for_prefill

BLOCK = 16
PROMPT = (101, 102, 103, 104, 105, 106, 107, 108)  # eight full blocks
PROMPT_TOKENS = len(PROMPT) * BLOCK + 5


def load(replica_id: str, queued: int | None = 0, hashes=(), free: int | None = 100, running: int | None = 0) -> ReplicaLoad:
    return ReplicaLoad(
        replica_id=replica_id,
        queued_prefill_tokens=queued,
        running=running,
        waiting=0,
        free_kv_blocks=free,
        total_kv_blocks=None if free is None else 200,
        prefix_hashes=frozenset(hashes),
    )


def prefill(loads, hashes=PROMPT, tokens=PROMPT_TOKENS, *, imbalance=1000, per_block=BLOCK):
    return rank_for_prefill(
        loads, hashes, tokens, affinity_tokens_per_block=per_block, block_size=BLOCK, imbalance_tokens=imbalance
    )


# ---- ReplicaLoad.from_stats ------------------------------------------------------------


def test_from_stats_reads_the_replica_dict():
    stats = {
        "pool": "prefill", "site": "a", "running": 3, "waiting": 2, "queued_prefill_tokens": 480,
        "free_kv_blocks": 90, "total_kv_blocks": 128, "tokens_per_s": 12.5, "busy_fraction": 0.4,
        "prefix_hashes": [5, 7, 11],
    }
    assert ReplicaLoad.from_stats("r1", stats) == ReplicaLoad("r1", 480, 3, 2, 90, 128, frozenset({5, 7, 11}))


@pytest.mark.parametrize("stats", [None, {}, {"pool": "vision", "site": "a"}])
def test_from_stats_missing_is_unknown(stats):
    assert ReplicaLoad.from_stats("r1", stats) == ReplicaLoad("r1")


def test_from_stats_malformed_values_are_unknown():
    stats = {"queued_prefill_tokens": "many", "running": -1, "free_kv_blocks": True, "prefix_hashes": ["x"]}
    assert ReplicaLoad.from_stats("r1", stats) == ReplicaLoad("r1")


# ---- prefix matching -----------------------------------------------------------------


def test_matched_prefix_counts_only_an_unbroken_run_from_the_first_block():
    assert matched_prefix_blocks(PROMPT, frozenset(PROMPT)) == 8
    assert matched_prefix_blocks(PROMPT, frozenset({101, 102, 104, 105})) == 2
    assert matched_prefix_blocks(PROMPT, frozenset({102, 103})) == 0
    assert matched_prefix_blocks((), frozenset({1})) == 0


# ---- prefill ranking -----------------------------------------------------------------


def test_prefill_prefers_fewest_queued_tokens_and_returns_full_ranking():
    assert prefill([load("a", 300), load("b", 100), load("c", 200)]) == ["b", "c", "a"]


def test_prefill_ties_break_by_replica_id():
    assert prefill([load("b", 50), load("a", 50), load("c", 50)]) == ["a", "b", "c"]


def test_prefill_affinity_beats_a_slightly_shorter_queue():
    # "a" holds 4 blocks (64 tokens) of the prompt; its queue is 40 tokens longer than "b".
    loads = [load("a", 140, PROMPT[:4]), load("b", 100)]
    assert prefill(loads) == ["a", "b"]


def test_prefill_longer_matching_prefix_wins():
    loads = [load("a", 0, PROMPT[:2]), load("b", 0, PROMPT[:5]), load("c", 0)]
    assert prefill(loads) == ["b", "a", "c"]


def test_prefill_affinity_credit_is_worth_only_the_tokens_saved():
    # 4 matched blocks save 64 tokens: not enough to beat a 100-token shorter queue.
    loads = [load("a", 200, PROMPT[:4]), load("b", 100)]
    assert prefill(loads) == ["b", "a"]


def test_prefill_affinity_overridden_by_imbalance():
    # A full-prompt match saves 128 tokens, more than the 100 that "a" is behind "b"; but
    # with a guard of 50 tokens "a" is too far behind for affinity to count.
    loads = [load("a", 200, PROMPT), load("b", 100)]
    assert prefill(loads, imbalance=1000) == ["a", "b"]
    assert prefill(loads, imbalance=100) == ["a", "b"]
    assert prefill(loads, imbalance=50) == ["b", "a"]


def test_prefill_imbalance_measured_against_least_loaded_known_replica():
    # "b" is within 200 of the least loaded ("c") and keeps its credit; "a" is not.
    loads = [load("a", 350, PROMPT), load("b", 200, PROMPT), load("c", 100), load("d", None)]
    assert prefill(loads, imbalance=200) == ["b", "c", "a", "d"]


def test_prefill_last_prompt_token_is_never_credited():
    # A prompt of exactly two blocks can reuse at most one: the last token is recomputed.
    loads = [load("a", 20, PROMPT[:2]), load("b", 0)]
    assert prefill(loads, hashes=PROMPT[:2], tokens=2 * BLOCK) == ["b", "a"]
    assert prefill(loads, hashes=PROMPT[:2], tokens=2 * BLOCK + 1) == ["a", "b"]


def test_prefill_affinity_weight_can_discount_stale_caches():
    loads = [load("a", 140, PROMPT[:4]), load("b", 100)]
    assert prefill(loads, per_block=8) == ["b", "a"]
    assert prefill(loads, per_block=0) == ["b", "a"]


def test_prefill_unknown_stats_rank_last_but_stay_eligible():
    loads = [load("z", None), load("a", 5000), load("y", None)]
    assert prefill(loads) == ["a", "y", "z"]
    assert prefill([load("only", None)]) == ["only"]


def test_prefill_without_hashes_is_plain_least_queued():
    loads = [load("a", 10, PROMPT), load("b", 5)]
    assert prefill(loads, hashes=(), tokens=3) == ["b", "a"]


def test_prefill_empty_pool():
    assert prefill([]) == []


@pytest.mark.parametrize(
    "options, field",
    [
        (dict(affinity_tokens_per_block=16, block_size=0, imbalance_tokens=0), "block_size"),
        (dict(affinity_tokens_per_block=-1, block_size=16, imbalance_tokens=0), "affinity_tokens_per_block"),
        (dict(affinity_tokens_per_block=16, block_size=16, imbalance_tokens=-5), "imbalance_tokens"),
    ],
)
def test_prefill_rejects_bad_options(options, field):
    with pytest.raises(ValueError, match=field):
        rank_for_prefill([load("a")], PROMPT, 10, **options)


# ---- decode ranking ------------------------------------------------------------------


def test_decode_prefers_most_free_blocks():
    loads = [load("a", free=40), load("b", free=120), load("c", free=80)]
    assert rank_for_decode(loads, tokens_needed=16, block_size=BLOCK) == ["b", "c", "a"]


def test_decode_fewest_running_breaks_ties():
    loads = [load("a", free=100, running=9), load("b", free=100, running=2), load("c", free=100, running=2)]
    assert rank_for_decode(loads, tokens_needed=16, block_size=BLOCK) == ["b", "c", "a"]


def test_decode_free_blocks_count_in_units_of_the_request():
    # 320 tokens = 20 blocks: 99 and 80 free blocks both hold 4 more such requests, so the
    # smaller batch wins; 100 vs 55 is a real difference (5 vs 2).
    loads = [load("a", free=99, running=8), load("b", free=80, running=1)]
    assert rank_for_decode(loads, tokens_needed=320, block_size=BLOCK) == ["b", "a"]
    loads = [load("a", free=100, running=8), load("b", free=55, running=1)]
    assert rank_for_decode(loads, tokens_needed=320, block_size=BLOCK) == ["a", "b"]


def test_decode_replica_that_cannot_hold_the_request_still_ranks():
    loads = [load("a", free=3), load("b", free=1)]
    assert rank_for_decode(loads, tokens_needed=1000, block_size=BLOCK) == ["a", "b"]


def test_decode_unknown_stats_rank_last():
    loads = [load("a", free=None), load("b", free=1), load("c", free=5, running=None)]
    assert rank_for_decode(loads, tokens_needed=16, block_size=BLOCK) == ["c", "b", "a"]


def test_decode_rejects_bad_block_size():
    with pytest.raises(ValueError, match="block_size"):
        rank_for_decode([load("a")], 16, block_size=0)
