"""QoS classes at the front door (after Niyama): which class a request belongs to, and whether
it is admitted now.

- Class. An API key may be bound to a class; a request may name a class in the header
  `x-pavana-qos-class` (gRPC metadata of the same name) to demote itself, never to claim a
  more important class than its key's. Without either, the spec's default class.
- Admission. Each ingress replica counts its requests in flight, per class and in all. A class
  is admitted while the total is below its `admit_below_load` share of `max_in_flight`, its
  own count below its `max_in_flight`, and — when the class sets `max_queue_s` — while its
  requests wait no longer than that for their first token (measured: `router/queue_wait.py`). Lower classes have lower ceilings, so as load rises
  batch traffic is refused first, then standard, and the headroom above their ceilings is kept
  for interactive requests: relegation happens before the interactive class misses its SLO.
  A refusal is HTTP 429 (gRPC RESOURCE_EXHAUSTED) with `Retry-After`, longer for lower classes,
  so that retries of the least urgent traffic come back last.

Pure: counts in, decisions out; the ingress calls `admit` and `release` around each request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from router.errors import APIError, invalid_request

QOS_HEADER = "x-pavana-qos-class"
RATE_LIMITED = "rate_limit_exceeded"


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    name: str
    priority: int  # lower is more important
    max_in_flight: int | None = None
    admit_below_load: float = 1.0
    max_queue_s: float | None = None  # refused while the class's measured wait is longer

    @property
    def retry_after_s(self) -> int:
        return 1 + 2 * self.priority


def resolve_class(requested: str | None, key_class: str | None, policies: dict[str, ClassPolicy], default: str) -> str:
    """The class a request runs in; an unknown class or a promotion is a 400."""
    base = key_class or default
    if not requested:
        return base
    if requested not in policies:
        raise invalid_request(f"{QOS_HEADER}: unknown QoS class {requested!r}; known: {sorted(policies)}", param=QOS_HEADER)
    if policies[requested].priority < policies[base].priority:
        raise invalid_request(
            f"{QOS_HEADER}: class {requested!r} is more important than {base!r}, which this API key may use",
            param=QOS_HEADER,
        )
    return requested


class Overloaded(APIError):
    """A request refused at admission: 429 with Retry-After."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(429, message, type="requests", code=RATE_LIMITED, headers={"Retry-After": str(retry_after_s)})


@dataclass
class AdmissionControl:
    policies: dict[str, ClassPolicy]
    max_in_flight: int
    in_flight: dict[str, int] = field(default_factory=dict)
    admitted: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec) -> AdmissionControl:
        """One ingress replica's admission from a cluster spec's QoS classes (the ingress and
        the simulator build it this one way)."""
        policies = [ClassPolicy(c.name, c.priority, c.max_in_flight, c.admit_below_load, c.max_queue_s) for c in spec.qos_classes]
        return cls.from_classes(policies, spec.max_in_flight)

    @classmethod
    def from_classes(cls, classes: Iterable[ClassPolicy], max_in_flight: int) -> AdmissionControl:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight: must be >= 1, got {max_in_flight}")
        return cls({c.name: c for c in classes}, max_in_flight)

    @property
    def total(self) -> int:
        return sum(self.in_flight.values())

    def ceiling(self, qos_class: str) -> int:
        """Requests in flight (all classes) above which this class is refused."""
        return max(1, math.floor(self.policies[qos_class].admit_below_load * self.max_in_flight))

    def admit(self, qos_class: str, waited_s: float = 0.0) -> None:
        """Count the request in, or raise `Overloaded`. `waited_s`: how long the class's requests
        wait for their first token now (`router/queue_wait.py`)."""
        policy = self.policies[qos_class]
        mine = self.in_flight.get(qos_class, 0)
        if policy.max_queue_s is not None and waited_s > policy.max_queue_s:
            self._refuse(qos_class)
            raise Overloaded(
                f"The server is busy: {qos_class!r} requests wait {waited_s:.1f} s for their first token, "
                f"more than the class's {policy.max_queue_s:g} s; retry later.",
                policy.retry_after_s,
            )
        if self.total >= self.ceiling(qos_class):
            self._refuse(qos_class)
            raise Overloaded(
                f"The server is busy: {qos_class!r} requests are admitted while fewer than "
                f"{self.ceiling(qos_class)} requests are in flight, and {self.total} are; retry later.",
                policy.retry_after_s,
            )
        if policy.max_in_flight is not None and mine >= policy.max_in_flight:
            self._refuse(qos_class)
            raise Overloaded(
                f"Too many {qos_class!r} requests in flight ({mine} of {policy.max_in_flight}); retry later.",
                policy.retry_after_s,
            )
        self.in_flight[qos_class] = mine + 1
        self.admitted[qos_class] = self.admitted.get(qos_class, 0) + 1

    def release(self, qos_class: str) -> None:
        count = self.in_flight.get(qos_class, 0)
        if count <= 0:
            raise RuntimeError(f"release of {qos_class!r} without an admitted request")
        self.in_flight[qos_class] = count - 1

    def _refuse(self, qos_class: str) -> None:
        self.refused[qos_class] = self.refused.get(qos_class, 0) + 1
