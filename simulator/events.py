"""The discrete-event loop: a heap of timed events, run in order of time, then kind, then
insertion.

Ties matter: when a power drop and a batch completion fall on the same instant, the power
change must act first (the replica it sheds never completes that batch), and an arrival at
the instant a replica frees up should see the freed replica. `Kind` fixes that order, and the
insertion counter makes every run with the same inputs replay the same way.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any


class Kind(enum.IntEnum):
    """Order of simultaneous events: lower first."""

    POWER = 0  # a site's available power changes
    SCALE = 1  # a replica finishes its cold start, or is removed
    COMPLETION = 2  # a batch (iteration) or an image encode finishes
    HANDOFF = 3  # a prefilled request's KV reaches its decode site
    ARRIVAL = 4  # a request arrives at the router
    CONTROL = 5  # the reconcile loop observes and plans
    SAMPLE = 6  # the metrics sampler records the cluster's state


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.kind = Kind.SAMPLE  # the kind of the event running now (replicas' decode runs read it)
        self._heap: list[tuple[float, int, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._order = itertools.count()
        self.events_run = 0

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, time_s: float, kind: Kind, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback(*args)` at simulated time `time_s` (never in the past)."""
        if not math.isfinite(time_s):
            raise ValueError(f"event time must be finite, got {time_s!r}")
        if time_s < self.now:
            raise ValueError(f"event at {time_s:.6f} s lies before the current time {self.now:.6f} s")
        heapq.heappush(self._heap, (time_s, int(kind), next(self._order), callback, args))

    def after(self, delay_s: float, kind: Kind, callback: Callable[..., Any], *args: Any) -> None:
        self.at(self.now + max(0.0, delay_s), kind, callback, *args)

    def next_time(self) -> float:
        return self._heap[0][0] if self._heap else math.inf

    def run(self, until_s: float = math.inf, on_advance: Callable[[float], None] | None = None) -> None:
        """Run events up to and including `until_s`; `on_advance(now)` is called now and then
        (every 4096 events) so a progress bar can follow simulated time cheaply."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= until_s:
            time_s, kind, _, callback, args = pop(heap)
            self.now = time_s
            self.kind = kind
            callback(*args)
            self.events_run += 1
            if on_advance is not None and not self.events_run & 4095:
                on_advance(time_s)
        if heap and math.isfinite(until_s) and until_s > self.now:
            self.now = until_s  # stopped by the horizon, not by running out of events
        self.kind = Kind.SAMPLE  # whatever looks now comes after every event up to `now`
        if on_advance is not None:
            on_advance(self.now)
