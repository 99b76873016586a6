"""Requests for the simulator: replayed traces (Azure LLM inference, BurstGPT) and synthetic
arrivals (Poisson, gamma bursts), with images and QoS classes attached by stated shares.

Traces carry token counts only, never text, so a simulated request is its arrival time,
prompt and output lengths, image count and class. Everything random takes a seed, so a
scenario replays exactly.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pavana_data import trace_path

AZURE_TRACES = ("code", "conv")  # the Azure LLM inference traces 2023 that pavana_data carries


class WorkloadError(ValueError):
    """A trace or workload setting that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    request_id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    num_images: int = 0
    qos_class: str = "interactive"


# -- traces ------------------------------------------------------------------------------------
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")


def load_trace(path: str | Path, *, limit: int | None = None, duration_s: float | None = None) -> list[TraceRequest]:
    """Read an Azure-format (optionally with NumImages) or BurstGPT-format CSV, detected by its
    header; arrivals start at 0 s, in time order. `limit` keeps the first requests,
    `duration_s` the first seconds."""
    path = Path(path)
    if not path.is_file():
        raise WorkloadError(f"trace: no file at {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if all(c in header for c in AZURE_COLUMNS):
            rows = _read_rows(reader, path, "TIMESTAMP", "ContextTokens", "GeneratedTokens", "NumImages", _azure_time)
        elif all(c in header for c in BURSTGPT_COLUMNS):
            rows = _read_rows(reader, path, "Timestamp", "Request tokens", "Response tokens", None, _seconds)
        else:
            raise WorkloadError(
                f"trace {path.name}: header {header} is neither Azure ({', '.join(AZURE_COLUMNS)}[, NumImages]) "
                f"nor BurstGPT ({', '.join(BURSTGPT_COLUMNS)})"
            )
    if not rows:
        raise WorkloadError(f"trace {path.name}: no requests")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    out = []
    for i, (t, prompt, output, images) in enumerate(rows):
        if duration_s is not None and t - t0 > duration_s:
            break
        if limit is not None and i >= limit:
            break
        out.append(TraceRequest(f"r{i}", t - t0, prompt, output, images))
    return out


def _read_rows(reader, path: Path, time_col: str, prompt_col: str, output_col: str, images_col: str | None, parse_time):
    rows = []
    has_images = images_col is not None and images_col in (reader.fieldnames or [])
    for line, row in enumerate(reader, start=2):
        try:
            t = parse_time(row[time_col])
        except (TypeError, ValueError):
            raise WorkloadError(f"trace {path.name}, line {line}: {time_col} {row.get(time_col)!r} is not a time") from None
        prompt = _count(row, prompt_col, path, line, low=1)
        # BurstGPT logs failed requests with 0 response tokens; a request yields at least one.
        output = max(1, _count(row, output_col, path, line, low=0))
        images = _count(row, images_col, path, line, low=0) if has_images else 0
        rows.append((t, prompt, output, images))
    return rows


def _count(row: Mapping[str, str], col: str, path: Path, line: int, *, low: int) -> int:
    raw = row.get(col)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise WorkloadError(f"trace {path.name}, line {line}: {col} {raw!r} is not a number") from None
    if not math.isfinite(value) or value < low or value != int(value):
        raise WorkloadError(f"trace {path.name}, line {line}: {col} must be an integer >= {low}, got {raw!r}")
    return int(value)


def _azure_time(text: str) -> float:
    """'2023-11-16 18:17:03.9799600' (seven fractional digits) as POSIX seconds."""
    whole, _, frac = text.strip().partition(".")
    stamp = dt.datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
    return stamp.timestamp() + (float("0." + frac) if frac else 0.0)


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def azure_trace(name: str, **kwargs) -> list[TraceRequest]:
    """One of the Azure traces Pavana carries by name ('code' or 'conv'), from `pavana_data`
    (or `PAVANA_DATA_DIR`)."""
    if name not in AZURE_TRACES:
        raise WorkloadError(f"trace: unknown Azure trace {name!r}; choose one of {sorted(AZURE_TRACES)}")
    return load_trace(trace_path(name), **kwargs)


# -- synthetic arrivals --------------------------------------------------------------------------
def poisson_arrivals(rate_rps: float, duration_s: float, seed: int) -> np.ndarray:
    return gamma_arrivals(rate_rps, duration_s, cv=1.0, seed=seed)


def gamma_arrivals(rate_rps: float, duration_s: float, *, cv: float, seed: int) -> np.ndarray:
    """Arrival times whose gaps are gamma-distributed with mean 1/rate and coefficient of
    variation `cv`: 1 is Poisson, above 1 bursty (clusters of arrivals, long lulls)."""
    if rate_rps <= 0 or duration_s <= 0 or cv <= 0:
        raise WorkloadError(f"arrivals: rate, duration and cv must be > 0, got {rate_rps}, {duration_s}, {cv}")
    rng = np.random.default_rng(seed)
    shape = 1.0 / cv**2
    n = int(rate_rps * duration_s * 1.5 + 20 * math.sqrt(rate_rps * duration_s) + 10)
    times = np.cumsum(rng.gamma(shape, 1.0 / (rate_rps * shape), size=n))
    while times[-1] < duration_s:  # rare: draw more
        times = np.concatenate([times, times[-1] + np.cumsum(rng.gamma(shape, 1.0 / (rate_rps * shape), size=n))])
    return times[times < duration_s]


def synthetic(
    arrivals: Sequence[float],
    lengths: Sequence[TraceRequest] | tuple[int, int],
    seed: int,
) -> list[TraceRequest]:
    """Requests at the given times, with (prompt, output) lengths drawn from a trace's
    requests (its empirical distribution) or fixed."""
    rng = np.random.default_rng(seed)
    if isinstance(lengths, tuple):
        pairs = [lengths] * len(arrivals)
    else:
        if not lengths:
            raise WorkloadError("lengths: need at least one request to draw lengths from")
        picks = rng.integers(0, len(lengths), size=len(arrivals))
        pairs = [(lengths[i].prompt_tokens, lengths[i].output_tokens) for i in picks]
    return [TraceRequest(f"r{i}", float(t), p, o) for i, (t, (p, o)) in enumerate(zip(arrivals, pairs))]


# -- images and classes ----------------------------------------------------------------------------
# Images per image-bearing request: heavy-tailed, as ModServe reports for production traffic
# (most requests carry one image, a few carry many). Probabilities of 1, 2, 4, 8, 16 images.
HEAVY_TAILED_IMAGES: dict[int, float] = {1: 0.62, 2: 0.18, 4: 0.11, 8: 0.06, 16: 0.03}


def attach_images(
    requests: Sequence[TraceRequest], share: float, distribution: Mapping[int, float] | None, seed: int
) -> list[TraceRequest]:
    """Give a `share` of requests images, their count drawn from `distribution` (count → weight)."""
    if not 0 <= share <= 1:
        raise WorkloadError(f"image share: must lie in [0, 1], got {share}")
    distribution = dict(distribution or HEAVY_TAILED_IMAGES)
    if not distribution or any(k < 1 or w < 0 for k, w in distribution.items()) or sum(distribution.values()) <= 0:
        raise WorkloadError(f"image distribution: counts must be >= 1 and weights >= 0, summing above 0, got {distribution}")
    rng = np.random.default_rng(seed)
    counts = np.array(sorted(distribution))
    weights = np.array([distribution[k] for k in counts], dtype=float)
    has = rng.random(len(requests)) < share
    drawn = rng.choice(counts, size=len(requests), p=weights / weights.sum())
    return [replace(r, num_images=int(n) if h else 0) for r, h, n in zip(requests, has, drawn)]


def assign_classes(requests: Sequence[TraceRequest], shares: Mapping[str, float], seed: int) -> list[TraceRequest]:
    """QoS class of each request, drawn by the given shares."""
    if not shares or any(w < 0 for w in shares.values()) or sum(shares.values()) <= 0:
        raise WorkloadError(f"class shares: need non-negative weights summing above 0, got {dict(shares)}")
    names = sorted(shares)
    weights = np.array([shares[n] for n in names], dtype=float)
    picks = np.random.default_rng(seed).choice(len(names), size=len(requests), p=weights / weights.sum())
    return [replace(r, qos_class=names[i]) for r, i in zip(requests, picks)]


def rescale_rate(requests: Sequence[TraceRequest], factor: float) -> list[TraceRequest]:
    """The same requests arriving `factor` times as fast (times divided by `factor`)."""
    if factor <= 0:
        raise WorkloadError(f"rate factor: must be > 0, got {factor}")
    return [replace(r, arrival_s=r.arrival_s / factor) for r in requests]


def superpose(requests: Sequence[TraceRequest], copies: int) -> list[TraceRequest]:
    """`copies` times the trace's rate over the trace's own span: copy k of every request
    arrives k/copies of the span later, wrapped around to the start. The span's shape (its
    busy and quiet stretches, thinned out by the shifts) and the lengths stay the trace's, where
    `rescale_rate` would squeeze the same requests into a shorter span."""
    if copies < 1:
        raise WorkloadError(f"copies: must be >= 1, got {copies}")
    if not requests:
        return []
    span = max(r.arrival_s for r in requests)
    out = [replace(r, request_id=f"{r.request_id}.{k}", arrival_s=_wrapped(r.arrival_s + span * k / copies, span))
           for k in range(copies) for r in requests]
    out.sort(key=lambda r: r.arrival_s)
    return out


def _wrapped(t: float, span: float) -> float:
    return t - span if t > span else t
