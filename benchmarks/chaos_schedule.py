"""The seeded fault schedule of `pavana bench chaos`: which fault, and no earlier than when.

Pure: the same seed, kinds and window give the same schedule, so a run that lost a request
can be repeated fault for fault. Every kind is drawn at least once (the first faults are a
seeded shuffle of all kinds, the rest seeded draws), and each fault falls at a seeded moment
inside its own slot of the window, so faults spread over the whole run instead of bunching.
A planned time is the earliest moment a fault may strike: the runner waits for the cluster to
be whole again after the previous fault before striking the next, and records both times.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

REDIS_RESTART = "restart:redis"
RECONCILER_KILL = "kill:reconciler"
REPLICA_KILL = "kill:"  # + pool name: "kill:decode"


def replica_kill(pool: str) -> str:
    return REPLICA_KILL + pool


def killed_pool(kind: str) -> str | None:
    """The pool a fault kills a replica of (`None` for the reconciler and Redis)."""
    if kind.startswith(REPLICA_KILL) and kind != RECONCILER_KILL:
        return kind.removeprefix(REPLICA_KILL)
    return None


def fault_kinds(pools: list[str]) -> list[str]:
    """Every fault a cluster with these pools can suffer: a replica of each pool killed, the
    reconcile actor killed, Redis restarted."""
    return [*(replica_kill(p) for p in pools), RECONCILER_KILL, REDIS_RESTART]


@dataclass(frozen=True, slots=True)
class PlannedFault:
    index: int
    at_s: float  # seconds from the start of traffic: the earliest moment it may strike
    kind: str


def fault_schedule(seed: int, kinds: list[str], count: int, window_s: float, *, lead_s: float = 0.0, tail_s: float = 0.0) -> list[PlannedFault]:
    """`count` faults (at least one of each of `kinds`, so `count >= len(kinds)`) between
    `lead_s` and `window_s - tail_s`, one per equal slot, in time order."""
    if not kinds:
        raise ValueError("kinds: a schedule needs at least one kind of fault")
    if count < len(kinds):
        raise ValueError(f"count: {count} faults cannot include each of the {len(kinds)} kinds at least once")
    span = window_s - lead_s - tail_s
    if span <= 0:
        raise ValueError(f"window_s: {window_s} s leaves no room after a lead of {lead_s} s and a tail of {tail_s} s")
    rng = random.Random(seed)
    chosen = list(kinds)
    rng.shuffle(chosen)
    chosen += [rng.choice(kinds) for _ in range(count - len(kinds))]
    slot = span / count
    return [PlannedFault(i, lead_s + slot * (i + rng.uniform(0.1, 0.9)), kind) for i, kind in enumerate(chosen)]
