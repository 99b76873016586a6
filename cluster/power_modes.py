"""Power modes: the clock settings a replica may run in, and which one each replica of a site
takes so that the site's replicas together follow the planned mix.

This lives in the vocabulary (not the planner) because the replicas enact the plan themselves:
a worker reads the routing plan and ranks itself among its site's live replicas, and workers
import nothing of Pavana but `cluster`. The simulator ranks its replicas with the same call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    power_w: float  # one replica's draw in this mode
    throughput_fraction: float  # of full-clock throughput


def full_mode(modes: Sequence[Mode]) -> Mode:
    """The mode with the most throughput (full clock)."""
    return max(modes, key=lambda m: (m.throughput_fraction, m.power_w))


def cheapest_mode(modes: Sequence[Mode]) -> Mode:
    return min(modes, key=lambda m: (m.power_w, -m.throughput_fraction))


def mode_at_rank(rank: int, modes: Sequence[Mode], counts: Mapping[str, int]) -> Mode:
    """The mode of the replica at `rank` (0-based, by id) among its site's: the planned modes
    in order of throughput (full clock first); beyond the plan's count, the mode drawing
    least power."""
    for mode in sorted(modes, key=lambda m: (-m.throughput_fraction, m.power_w)):
        n = counts.get(mode.name, 0)
        if rank < n:
            return mode
        rank -= n
    return cheapest_mode(modes)


def mode_for_replica(replica_id: str, live_replica_ids: Iterable[str], modes: Sequence[Mode], counts: Mapping[str, int]) -> Mode:
    """The mode a replica runs in, by its rank among its site's live replicas sorted by id.
    Every replica of a site computes the same assignment on its own."""
    return mode_at_rank(sorted(set(live_replica_ids) | {replica_id}).index(replica_id), modes, counts)


def assign_modes(replica_ids: Iterable[str], modes: Sequence[Mode], counts: Mapping[str, int]) -> dict[str, Mode]:
    """Every replica's mode at once, as each replica of the site computes it for itself: one
    sort for the site rather than one per replica (a round at 1,024 replicas stays cheap)."""
    return {r: mode_at_rank(rank, modes, counts) for rank, r in enumerate(sorted(set(replica_ids)))}
