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


def mode_for_replica(replica_id: str, live_replica_ids: Iterable[str], modes: Sequence[Mode], counts: Mapping[str, int]) -> Mode:
    """The mode a replica runs in: replicas of a site sorted by id take the planned modes in
    order of throughput (full clock first); replicas beyond the plan's count take the mode
    drawing least power. Every replica of a site computes the same assignment on its own."""
    ranked = sorted(set(live_replica_ids) | {replica_id})
    rank = ranked.index(replica_id)
    for mode in sorted(modes, key=lambda m: (-m.throughput_fraction, m.power_w)):
        n = counts.get(mode.name, 0)
        if rank < n:
            return mode
        rank -= n
    return cheapest_mode(modes)


def assign_modes(replica_ids: Iterable[str], modes: Sequence[Mode], counts: Mapping[str, int]) -> dict[str, Mode]:
    """Every replica's mode at once: what each replica of the site computes for itself."""
    ids = sorted(set(replica_ids))
    return {r: mode_for_replica(r, ids, modes, counts) for r in ids}
