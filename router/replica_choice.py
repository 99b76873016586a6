"""Which replica of a pool takes a request: pure ranking over the replicas' routing stats.

The Ray adapters in `router/replica_router.py` turn each candidate's `routing_stats` into a
`ReplicaLoad`, call a ranking here and hand Ray the whole ranking, best first, so that Ray
can fall back to the next replica when the best one rejects the request (full queue).

No Ray, no clock: the simulator and the tests call these functions with hand-built loads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One replica as its last routing stats describe it.

    A field is `None` when the replica has not reported it yet (a replica just started, or
    a stats call that failed): such a replica is still eligible, but ranks after every
    replica whose load is known, since choosing it would be a guess.
    """

    replica_id: str
    queued_prefill_tokens: int | None = None
    running: int | None = None
    waiting: int | None = None
    free_kv_blocks: int | None = None
    total_kv_blocks: int | None = None
    prefix_hashes: frozenset[int] = frozenset()

    @classmethod
    def from_stats(cls, replica_id: str, stats: Mapping[str, Any] | None) -> ReplicaLoad:
        """From the dict that `LLMReplica.record_routing_stats` returns (missing or
        malformed keys become unknown)."""
        stats = stats or {}
        hashes = stats.get("prefix_hashes") or ()
        try:
            prefix_hashes = frozenset(int(h) for h in hashes)
        except (TypeError, ValueError):
            prefix_hashes = frozenset()
        return cls(
            replica_id=replica_id,
            queued_prefill_tokens=_count(stats.get("queued_prefill_tokens")),
            running=_count(stats.get("running")),
            waiting=_count(stats.get("waiting")),
            free_kv_blocks=_count(stats.get("free_kv_blocks")),
            total_kv_blocks=_count(stats.get("total_kv_blocks")),
            prefix_hashes=prefix_hashes,
        )


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
        return None
    return int(value)


def matched_prefix_blocks(prompt_hashes: Sequence[int], cached_hashes: frozenset[int]) -> int:
    """How many of the prompt's leading full blocks a replica already holds.

    Block hashes are chained (each covers its block and everything before it, as in vLLM's
    automatic prefix caching), so only an unbroken run from the first block can be reused:
    counting stops at the first miss.
    """
    matched = 0
    for block_hash in prompt_hashes:
        if block_hash not in cached_hashes:
            break
        matched += 1
    return matched


def rank_for_prefill(
    loads: Iterable[ReplicaLoad],
    prefix_hashes: Sequence[int],
    num_prompt_tokens: int,
    *,
    affinity_tokens_per_block: int,
    block_size: int,
    imbalance_tokens: int,
) -> list[str]:
    """Replica ids for a prefill (or colocated) request, best first.

    Load is the prefill tokens already queued on a replica: with chunked prefills
    (Sarathi-Serve) a replica works through a fixed token budget per iteration, so the
    queued tokens ahead of a prompt, not the number of requests, set its time to first token.

    Prefix affinity: a replica that holds the first k blocks of the prompt in its prefix
    cache (vLLM automatic prefix caching) need not recompute them, so it is credited with
    `affinity_tokens_per_block` tokens per matched block (normally `block_size`; less to
    discount stats that may be stale by a routing-stats period). At most
    `(num_prompt_tokens - 1) // block_size` blocks count: the last prompt token is always
    computed again, for its logits.

    Affinity never wins for a replica whose queue exceeds the least-loaded known replica's by
    more than `imbalance_tokens`: otherwise a popular prefix (a shared system prompt) would
    pile every request onto one replica. This is the guard of SGLang's cache-aware router and
    of Ray Serve LLM's `PrefixCacheAffinityRouter` (`imbalanced_threshold`).

    Ties go to the smaller replica id, so a decision can be replayed.
    """
    check_at_least("block_size", block_size, 1)
    check_at_least("affinity_tokens_per_block", affinity_tokens_per_block, 0)
    check_at_least("imbalance_tokens", imbalance_tokens, 0)
    loads = list(loads)
    known_queues = [load.queued_prefill_tokens for load in loads if load.queued_prefill_tokens is not None]
    least_queued = min(known_queues, default=0)
    reusable_blocks = max(0, (num_prompt_tokens - 1) // block_size)

    def key(load: ReplicaLoad) -> tuple[int, int, str]:
        queued = load.queued_prefill_tokens
        if queued is None:
            return (1, 0, load.replica_id)
        credit = 0
        if queued - least_queued <= imbalance_tokens:
            blocks = min(matched_prefix_blocks(prefix_hashes, load.prefix_hashes), reusable_blocks)
            credit = blocks * affinity_tokens_per_block
        return (0, queued - credit, load.replica_id)

    return [load.replica_id for load in sorted(loads, key=key)]


def rank_for_decode(loads: Iterable[ReplicaLoad], tokens_needed: int, *, block_size: int = 16) -> list[str]:
    """Replica ids for a decode request (a KV handoff from a prefill replica), best first.

    A decode replica is bounded by KV memory: the handed-off cache plus the tokens still to
    generate must fit, or the replica preempts and recomputes (DistServe places decode
    work by KV capacity; vLLM preempts when blocks run out). So the most free KV blocks wins,
    counted in units of this request's footprint (`tokens_needed` tokens): two replicas that
    could each take as many more requests like this one are equally roomy, and then the one
    with fewer running sequences wins, since a decode step's time grows with its batch.
    """
    check_at_least("block_size", block_size, 1)
    blocks_needed = max(1, math.ceil(tokens_needed / block_size))

    def key(load: ReplicaLoad) -> tuple[int, int, float, str]:
        if load.free_kv_blocks is None:
            return (1, 0, 0, load.replica_id)
        running = load.running if load.running is not None else math.inf
        return (0, -(load.free_kv_blocks // blocks_needed), running, load.replica_id)

    return [load.replica_id for load in sorted(loads, key=key)]


def check_at_least(name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
