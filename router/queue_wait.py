"""How long each QoS class's requests wait for their first token at this ingress, measured.

Admission (`router/admission.py`) refuses a class whose requests already wait longer than its
`max_queue_s` (Niyama's relegation: a request that would miss its class's TTFT target anyway
only takes capacity from those that can still meet theirs). The wait of a class is the larger
of two figures:

- the 90th percentile of the first-token times of its requests answered in the last `window_s`;
- the age of its oldest request still without a first token: when a queue grows, the answered
  requests show it late, the waiting ones at once.

Pure: the ingress tells it when requests start, get their first token and end, with the time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 10.0
MIN_SAMPLES = 3  # fewer answered requests in the window say nothing about the queue


@dataclass
class QueueWaits:
    window_s: float = WINDOW_S
    _answered: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)  # class -> (answered at, wait)
    _waiting: dict[str, tuple[str, float]] = field(default_factory=dict)  # request id -> (class, started at)

    def started(self, request_id: str, qos_class: str, now: float) -> None:
        self._waiting[request_id] = (qos_class, now)

    def first_token(self, request_id: str, now: float) -> None:
        entry = self._waiting.pop(request_id, None)
        if entry is not None:
            qos_class, started = entry
            self._answered.setdefault(qos_class, deque()).append((now, now - started))

    def ended(self, request_id: str) -> None:
        """A request that ended without a first token (refused downstream, cancelled) stops counting."""
        self._waiting.pop(request_id, None)

    def wait_s(self, qos_class: str, now: float) -> float:
        answered = self._answered.get(qos_class, deque())
        while answered and now - answered[0][0] > self.window_s:
            answered.popleft()
        recent = sorted(w for _, w in answered)
        p90 = recent[min(len(recent) - 1, int(0.9 * len(recent)))] if len(recent) >= MIN_SAMPLES else 0.0
        oldest = max((now - t for c, t in self._waiting.values() if c == qos_class), default=0.0)
        return max(p90, oldest)
