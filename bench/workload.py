"""A benchmark's requests: when each arrives, how long it is, its QoS class, its images, and
the exact HTTP body it sends.

Everything is decided and built before the first request is sent, so the load generator does
no tokenizing or image encoding on its clock and the same seed gives the same run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.arrivals import gamma_arrivals, poisson_arrivals
from bench.prompts import PromptFactory, png_data_url
from bench.trace import TraceRow

QOS_HEADER = "x-pavana-qos-class"
# Room left for what a chat request adds around its text: the template's role markers, and
# each image's placeholder tokens (16 for the bundled model; larger towers need more).
CHAT_OVERHEAD_TOKENS = 32
TOKENS_PER_IMAGE_ALLOWANCE = 64


class WorkloadError(ValueError):
    """Workload options that cannot make a run; the message names the option."""


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    index: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    qos_class: str
    num_images: int = 0


@dataclass(frozen=True, slots=True)
class HTTPRequest:
    """One request ready to send: the path under the API's base URL, its JSON body, headers."""

    planned: PlannedRequest
    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def parse_class_mix(text: str) -> dict[str, float]:
    """`"interactive=0.7,batch=0.3"` → shares; they must be positive and sum to 1."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise WorkloadError(f"classes: expected name=share pairs like 'interactive=0.7,batch=0.3', got {part!r}")
        try:
            share = float(value)
        except ValueError:
            raise WorkloadError(f"classes: share of {name!r} is not a number: {value!r}") from None
        if not (math.isfinite(share) and share > 0):
            raise WorkloadError(f"classes: share of {name!r} must be > 0, got {share}")
        if name in mix:
            raise WorkloadError(f"classes: {name!r} is given twice")
        mix[name] = share
    if not mix:
        raise WorkloadError("classes: no class given")
    if abs(sum(mix.values()) - 1.0) > 1e-6:
        raise WorkloadError(f"classes: shares must sum to 1, got {sum(mix.values()):g}")
    return mix


def synthetic_arrivals(kind: str, rate: float, *, count: int | None, duration_s: float | None, cv: float, seed: int) -> list[float]:
    if kind == "poisson":
        return poisson_arrivals(rate, count=count, duration_s=duration_s, seed=seed)
    if kind == "gamma":
        return gamma_arrivals(rate, cv, count=count, duration_s=duration_s, seed=seed)
    raise WorkloadError(f"arrivals: must be 'poisson' or 'gamma', got {kind!r}")


def from_trace(rows: Sequence[TraceRow], *, rate_scale: float = 1.0, duration_s: float | None = None) -> list[TraceRow]:
    """The trace's own arrivals, `rate_scale` times as fast, cut at `duration_s` if given."""
    if not (math.isfinite(rate_scale) and rate_scale > 0):
        raise WorkloadError(f"rate_scale: must be > 0, got {rate_scale}")
    scaled = [TraceRow(r.arrival_s / rate_scale, r.context_tokens, r.generated_tokens, r.num_images) for r in rows]
    if duration_s is not None:
        scaled = [r for r in scaled if r.arrival_s < duration_s]
    return scaled


def plan(
    arrivals_s: Sequence[float],
    lengths: Sequence[tuple[int, int]],
    *,
    class_mix: Mapping[str, float],
    images_share: float = 0.0,
    images_per_request: int = 1,
    trace_images: Sequence[int] | None = None,
    max_context_tokens: int | None = None,
    max_prompt_tokens: int | None = None,
    max_output_tokens: int | None = None,
    seed: int = 0,
) -> tuple[list[PlannedRequest], int]:
    """Pair arrivals with (prompt, output) lengths (cycled when fewer), draw each request's
    class and images, and clamp lengths to the caps and to the served context. Returns the
    requests and how many were clamped, which a report must state."""
    if not arrivals_s:
        raise WorkloadError("no arrivals: the duration or number of requests gives no request")
    if not lengths:
        raise WorkloadError("no request lengths")
    if not 0 <= images_share <= 1:
        raise WorkloadError(f"images_share: must lie in [0, 1], got {images_share}")
    if images_per_request < 1:
        raise WorkloadError(f"images_per_request: must be >= 1, got {images_per_request}")
    for name, cap in (("max_context_tokens", max_context_tokens), ("max_prompt_tokens", max_prompt_tokens), ("max_output_tokens", max_output_tokens)):
        if cap is not None and cap < 1:
            raise WorkloadError(f"{name}: must be >= 1, got {cap}")
    rng = np.random.default_rng(seed)
    names = list(class_mix)
    classes = rng.choice(len(names), size=len(arrivals_s), p=np.asarray([class_mix[n] for n in names]) / sum(class_mix.values()))
    with_images = rng.random(len(arrivals_s)) < images_share
    planned: list[PlannedRequest] = []
    clamped = 0
    for i, arrival in enumerate(arrivals_s):
        prompt, output = lengths[i % len(lengths)]
        images = trace_images[i % len(trace_images)] if trace_images is not None else (images_per_request if with_images[i] else 0)
        new_prompt = min(prompt, max_prompt_tokens or prompt)
        new_output = min(output, max_output_tokens or output)
        if max_context_tokens is not None:
            overhead = (CHAT_OVERHEAD_TOKENS + TOKENS_PER_IMAGE_ALLOWANCE * images) if images else 0
            room = max_context_tokens - overhead
            if room < 2:
                raise WorkloadError(f"max_context_tokens: {max_context_tokens} leaves no room for a request with {images} images")
            new_output = min(new_output, room - 1)
            new_prompt = min(new_prompt, room - new_output)
        clamped += (new_prompt, new_output) != (prompt, output)
        planned.append(PlannedRequest(i, float(arrival), new_prompt, new_output, names[classes[i]], images))
    return planned, clamped


def http_requests(
    planned: Sequence[PlannedRequest],
    prompts: PromptFactory,
    *,
    model: str,
    ignore_eos: bool = True,
    image_size: int = 64,
    seed: int = 0,
) -> list[HTTPRequest]:
    """Bodies for the OpenAI API: `/completions` for text, `/chat/completions` with image
    content parts (data URLs) for requests with images. Streamed, with the usage chunk, so
    the client can count the tokens that really arrived; greedy, so runs repeat."""
    built: list[HTTPRequest] = []
    for p in planned:
        text = prompts.text(p.index, p.prompt_tokens)
        common: dict[str, Any] = {
            "model": model,
            "max_tokens": p.output_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if ignore_eos:
            common["ignore_eos"] = True
        headers = {QOS_HEADER: p.qos_class}
        if p.num_images:
            parts = [{"type": "image_url", "image_url": {"url": png_data_url(seed * 1_000_003 + p.index * 97 + k, image_size)}} for k in range(p.num_images)]
            parts.append({"type": "text", "text": text})
            built.append(HTTPRequest(p, "/chat/completions", {**common, "messages": [{"role": "user", "content": parts}]}, headers))
        else:
            built.append(HTTPRequest(p, "/completions", {**common, "prompt": text}, headers))
    return built
