"""Every replica's power mode for a round, ranked once instead of once per replica.

`cluster.power_modes.assign_modes` gives each replica of a site the mode
`mode_for_replica` computes for it, and `mode_for_replica` sorts the site's ids and searches
for the replica's place: for n replicas that is n sorts and n searches, every round. At 1,024
replicas it cost 0.4 s a round, so that one hour of 5-s rounds took longer than everything
else the simulator does. `assign_modes` here sorts once and walks the ranks with the same rule
(the same mode order, the same subtraction, the same fallback), giving the same mapping
(`tests/simulator/test_mode_ranking.py` compares them on random sites).

`plan_round` is the live reconcile loop's call and the simulator must make exactly that call,
so the simulator's controller does not reimplement the round: `fast_mode_assignment` lends
this function to `autoscaler.round` for the duration of one round and puts the live one back.
Once `cluster.power_modes.assign_modes` itself ranks once, this module can go.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence

import autoscaler.round as live_round
from cluster.power_modes import Mode, cheapest_mode


def assign_modes(replica_ids: Iterable[str], modes: Sequence[Mode], counts: Mapping[str, int]) -> dict[str, Mode]:
    """`cluster.power_modes.assign_modes(replica_ids, modes, counts)`, in one sort."""
    ids = sorted(set(replica_ids))
    order = [(mode, counts.get(mode.name, 0)) for mode in sorted(modes, key=lambda m: (-m.throughput_fraction, m.power_w))]
    fallback = cheapest_mode(modes) if ids else None
    out: dict[str, Mode] = {}
    for position, replica_id in enumerate(ids):
        rank = position
        for mode, n in order:
            if rank < n:
                out[replica_id] = mode
                break
            rank -= n
        else:
            out[replica_id] = fallback
    return out


@contextlib.contextmanager
def fast_mode_assignment() -> Iterator[None]:
    """`autoscaler.round` ranks modes with `assign_modes` above while the block runs."""
    live = live_round.assign_modes
    live_round.assign_modes = assign_modes
    try:
        yield
    finally:
        live_round.assign_modes = live
