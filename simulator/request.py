"""A request as the simulator follows it: its trace entry, where it went, and the time of
every token it received, from which TTFT, TBT and end-to-end latency are read."""

from __future__ import annotations

from collections.abc import Callable

import math
from dataclasses import dataclass, field

from simulator.workload import TraceRequest


@dataclass(slots=True, eq=False)
class SimRequest:
    trace: TraceRequest
    site: str | None = None
    stages: list[str] = field(default_factory=list)
    first_token_s: float | None = None
    last_token_s: float | None = None
    tokens: int = 0
    gaps: list[float] = field(default_factory=list)  # time between consecutive tokens
    finish_s: float | None = None
    outcome: str | None = None  # ok | rejected | failed
    reason: str = ""

    @property
    def request_id(self) -> str:
        return self.trace.request_id

    @property
    def arrival_s(self) -> float:
        return self.trace.arrival_s

    @property
    def prompt_tokens(self) -> int:
        """Tokens the language model prefills: the text prompt plus every image's tokens
        (set by the cluster, which knows the model's tokens per image)."""
        return self.trace.prompt_tokens + self.image_tokens

    image_tokens: int = 0
    net_s: float = 0.0  # network round trip between the client and its site
    # QoS, stamped at arrival as the ingress does: the class's priority (lower first) and the
    # deadline its TTFT SLO sets for the first token; `admitted` while it holds an admission slot.
    priority: int = 0
    deadline_s: float = math.inf
    admitted: bool = False
    # Told the first token's time, as the ingress measures each class's wait (`router/queue_wait.py`).
    on_first_token: Callable[[float], None] | None = None

    def token(self, now_s: float) -> None:
        if self.first_token_s is None:
            self.first_token_s = now_s
            if self.on_first_token is not None:
                self.on_first_token(now_s)
        else:
            self.gaps.append(now_s - self.last_token_s)
        self.last_token_s = now_s
        self.tokens += 1

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s + self.net_s

    @property
    def e2e_s(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.arrival_s + self.net_s
