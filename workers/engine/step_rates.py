"""Prefill and decode rates of a replica, measured from its steps.

A step of the stall-free scheduler mixes a prefill chunk with decodes, so "tokens per busy
second" mixes two very different rates: a colocated replica spending most steps on decodes
reads a prefill capacity tens of times too low, and the autoscaler would ask for that many
more replicas. Each step's time is therefore attributed to prefill and to decode in
proportion to the tokens of each it computed, and each rate is its tokens over its own time.
Pure: steps in, rates out; the engine's loop and the simulator's replica record the steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Step:
    duration_s: float
    prefill_tokens: int
    decode_tokens: int


@dataclass(frozen=True, slots=True)
class Rates:
    prefill_tokens_per_busy_s: float  # 0.0: no prefill in the window to measure
    decode_tokens_per_busy_s: float  # 0.0: no decode in the window to measure


def split(step: Step) -> tuple[float, float]:
    """The step's seconds attributed to prefill and to decode."""
    total = step.prefill_tokens + step.decode_tokens
    if total <= 0:
        return 0.0, 0.0
    return step.duration_s * step.prefill_tokens / total, step.duration_s * step.decode_tokens / total


def rate(tokens: float, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def rates(steps: Iterable[Step]) -> Rates:
    prefill = decode = prefill_s = decode_s = 0.0
    for s in steps:
        p, d = split(s)
        prefill, decode, prefill_s, decode_s = prefill + s.prefill_tokens, decode + s.decode_tokens, prefill_s + p, decode_s + d
    return Rates(rate(prefill, prefill_s), rate(decode, decode_s))
