"""The replica `router.replica_choice.rank_for_prefill` puts first, found in O(log n).

The live router ranks a pool's replicas for every request by their queued prefill tokens,
crediting those whose prefix cache holds the prompt's first blocks. Simulated requests carry
token counts, not tokens, so they have no prefix hashes and no replica earns credit: the
ranking's first replica is then simply the accepting one with the fewest queued prefill
tokens, the smaller replica id on a tie. Ranking 1,024 replicas that way for each of 70,000
requests was most of a run's time; this keeps them in a heap keyed by exactly that pair
instead, updated whenever a replica's queue changes.

Entries go stale (the replica's queue has moved on, or it stopped accepting) and are dropped
when they reach the top; every change pushes the replica's current key, so the top valid entry
is the true minimum. `tests/simulator/test_prefill_index.py` checks every choice of a run
against `rank_for_prefill` over all replicas.
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulator.replica import SimReplica


class LeastQueuedReplicas:
    """The accepting replicas of one pool at one site, by (queued prefill tokens, replica id)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, str, int, SimReplica]] = []
        self._members: dict[str, SimReplica] = {}
        self._order = itertools.count()

    def add(self, replica: SimReplica) -> None:
        """A replica that has started accepting work (ready after its cold start)."""
        self._members[replica.replica_id] = replica
        self.changed(replica)

    def changed(self, replica: SimReplica) -> None:
        """A member's queued prefill tokens changed (pushes its current key)."""
        if replica.replica_id not in self._members:
            return
        heapq.heappush(self._heap, (replica.queued_prefill_tokens, replica.replica_id, next(self._order), replica))
        if len(self._heap) > 4 * len(self._members) + 64:
            self._rebuild()

    def best(self) -> SimReplica | None:
        """The accepting replica with the fewest queued prefill tokens (smaller id on a tie)."""
        heap = self._heap
        while heap:
            queued, _, _, replica = heap[0]
            if replica.accepting and replica.queued_prefill_tokens == queued:
                return replica
            heapq.heappop(heap)
            if not replica.accepting:
                self._members.pop(replica.replica_id, None)
        return None

    def _rebuild(self) -> None:
        """Drop stale entries: one current entry per accepting member."""
        self._members = {rid: r for rid, r in self._members.items() if r.accepting}
        self._heap = [(r.queued_prefill_tokens, rid, next(self._order), r) for rid, r in self._members.items()]
        heapq.heapify(self._heap)
