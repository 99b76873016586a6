"""User-facing serving metrics, as pure functions over the times tokens reached the client.

Why these and not only means: a streamed answer is read token by token, so what a user feels
is the wait for the first token (TTFT) and every gap after it (TBT). TPOT — the mean gap — and
any mean of TBT hide a stall of a second among fifty quick tokens; percentiles over *every*
gap and Etalon's fluidity-index expose it ("On Evaluating Performance of LLM Inference
Serving Systems", Agrawal et al., the Etalon paper).

Times are seconds on one clock; each request's times are measured from its *arrival* (the
moment the workload scheduled it), so queueing in the client or the server counts.

Nothing here does I/O or reads the clock: the client records times, these functions judge them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

# A stall of k deadline periods is floor(k) misses; without the epsilon, 0.9 / 0.1 evaluating
# to 8.999… would lose one.
_FLOOR_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class SLOTarget:
    """A class's targets: the first token within `ttft_s`, later tokens every `tbt_s`."""

    ttft_s: float
    tbt_s: float

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tbt_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Percentiles of a sample, always with the sample's size: a P99 of 12 values is not a P99."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    def as_dict(self, prefix: str, unit: str = "_s") -> dict[str, float | int]:
        return {
            f"{prefix}_p50{unit}": self.p50,
            f"{prefix}_p90{unit}": self.p90,
            f"{prefix}_p99{unit}": self.p99,
            f"{prefix}_max{unit}": self.max,
            f"{prefix}_mean{unit}": self.mean,
            f"{prefix}_count": self.count,
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) with linear interpolation, NaN for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"q: must lie in [0, 100], got {q}")
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def percentiles(values: Iterable[float]) -> Percentiles:
    data = np.asarray(list(values), dtype=float)
    if data.size == 0:
        nan = float("nan")
        return Percentiles(0, nan, nan, nan, nan, nan)
    p50, p90, p99 = (float(v) for v in np.percentile(data, [50, 90, 99]))
    return Percentiles(int(data.size), p50, p90, p99, float(data.max()), float(data.mean()))


# ---------------------------------------------------------------------------------------------
# One request
# ---------------------------------------------------------------------------------------------


def _check_times(arrival_s: float, token_times_s: Sequence[float]) -> None:
    previous = arrival_s
    for i, t in enumerate(token_times_s):
        if t < previous:
            raise ValueError(f"token_times_s[{i}]: {t} comes before {previous}; times must not decrease from the arrival")
        previous = t


def ttft(arrival_s: float, token_times_s: Sequence[float]) -> float | None:
    """Time to first token, from arrival (queueing and prefill included); None with no token."""
    _check_times(arrival_s, token_times_s)
    return token_times_s[0] - arrival_s if token_times_s else None


def tbt(token_times_s: Sequence[float]) -> list[float]:
    """Every gap between consecutive tokens — all of them, never a summary."""
    _check_times(token_times_s[0] if token_times_s else 0.0, token_times_s)
    return [b - a for a, b in zip(token_times_s, token_times_s[1:])]


def tpot(token_times_s: Sequence[float]) -> float | None:
    """Time per output token after the first: (last − first) / (n − 1). A mean, so it hides
    stalls; kept because other harnesses report it. None with fewer than two tokens."""
    if len(token_times_s) < 2:
        return None
    return (token_times_s[-1] - token_times_s[0]) / (len(token_times_s) - 1)


def end_to_end_latency(arrival_s: float, token_times_s: Sequence[float]) -> float | None:
    return token_times_s[-1] - arrival_s if token_times_s else None


def normalized_latency(arrival_s: float, token_times_s: Sequence[float]) -> float | None:
    """End-to-end latency per output token (Etalon's normalised latency)."""
    e2e = end_to_end_latency(arrival_s, token_times_s)
    return e2e / len(token_times_s) if e2e is not None else None


@dataclass(frozen=True, slots=True)
class Fluidity:
    deadlines_met: int
    deadlines_missed: int

    @property
    def index(self) -> float:
        total = self.deadlines_met + self.deadlines_missed
        return self.deadlines_met / total if total else float("nan")


def fluidity(arrival_s: float, token_times_s: Sequence[float], target: SLOTarget) -> Fluidity:
    """Etalon's fluidity-index of one request: the share of its token deadlines that were met.

    Token i (0-based) is due at `arrival + ttft_s + i·tbt_s`: every token is a periodic task
    whose deadline is its period (`ttft_s` for the first, `tbt_s` after) plus the slack the
    tokens before it left unused, so a token that comes early lends its margin to the next.
    When a token misses its deadline the slack is reset and the later deadlines are re-based
    from that token's actual arrival — one stall is not counted again at every later token.
    A token that arrives k·tbt_s after its deadline let k more deadlines pass unserved, and each
    of them counts as missed: a stall of three periods costs three deadlines, not one (as in
    Etalon's reference implementation, `metric_utils.get_request_level_deadline_miss_rate`).
    When no stall lasts two periods, this is exactly the share of tokens that met their
    deadlines.

    In the gaps form: with g_0 = TTFT, g_i = t_i − t_{i−1}, D_0 = ttft_s, D_i = tbt_s and
    slack_0 = 0: if g_i ≤ D_i + slack_i the deadline is met and slack_{i+1} = slack_i + D_i − g_i;
    otherwise 1 + ⌊(g_i − slack_i − D_i) / tbt_s⌋ deadlines are missed and slack_{i+1} = 0.
    """
    _check_times(arrival_s, token_times_s)
    met = missed = 0
    slack = 0.0
    previous = arrival_s
    for i, t in enumerate(token_times_s):
        gap = t - previous
        period = target.ttft_s if i == 0 else target.tbt_s
        if gap <= period + slack:
            met += 1
            slack += period - gap
        else:
            missed += 1 + math.floor((gap - slack - period) / target.tbt_s + _FLOOR_EPSILON)
            slack = 0.0
        previous = t
    return Fluidity(met, missed)


@dataclass(frozen=True, slots=True)
class RequestMetrics:
    """What one request looked like to its user; latency fields are None when it failed
    before its first token."""

    index: int
    qos_class: str
    arrival_s: float
    ok: bool
    num_output_tokens: int
    ttft_s: float | None
    tbt_s: list[float]
    tpot_s: float | None
    e2e_s: float | None
    normalized_latency_s: float | None
    fluidity_index: float
    tbt_p99_s: float | None
    meets_slo: bool


def request_metrics(
    *,
    index: int,
    qos_class: str,
    arrival_s: float,
    token_times_s: Sequence[float],
    ok: bool,
    target: SLOTarget,
    num_output_tokens: int | None = None,
) -> RequestMetrics:
    """All metrics of one request against its class's targets.

    The SLO is met when the request succeeded, its TTFT ≤ `ttft_s` and the P99 of *its own*
    gaps ≤ `tbt_s` (a request of one token has no gaps and is judged on TTFT alone). A failed
    request never meets its SLO, however fast its partial answer was.

    `token_times_s` are the times text reached the client. When the server counts more tokens
    than it sent pieces of text (a token whose bytes end inside a character is held back and
    sent with the next), pass its count as `num_output_tokens`: TPOT and normalised latency
    divide by tokens, while TBT and the fluidity-index stay on what the user saw arrive."""
    times = list(token_times_s)
    gaps = tbt(times)
    first = ttft(arrival_s, times)
    tokens = len(times) if num_output_tokens is None else num_output_tokens
    if tokens < len(times):
        raise ValueError(f"num_output_tokens: {tokens} is fewer than the {len(times)} pieces of text that arrived")
    last = times[-1] if times else None
    tbt_p99 = percentile(gaps, 99) if gaps else None
    meets = ok and first is not None and first <= target.ttft_s and (tbt_p99 is None or tbt_p99 <= target.tbt_s)
    return RequestMetrics(
        index=index,
        qos_class=qos_class,
        arrival_s=arrival_s,
        ok=ok,
        num_output_tokens=tokens,
        ttft_s=first,
        tbt_s=gaps,
        tpot_s=(last - times[0]) / (tokens - 1) if last is not None and tokens >= 2 and len(times) >= 2 else None,
        e2e_s=end_to_end_latency(arrival_s, times),
        normalized_latency_s=(last - arrival_s) / tokens if last is not None and tokens else None,
        # A failed request served none of its deadlines as promised: its fluidity is 0.
        fluidity_index=fluidity(arrival_s, times, target).index if ok else 0.0,
        tbt_p99_s=tbt_p99,
        meets_slo=meets,
    )


# ---------------------------------------------------------------------------------------------
# A run
# ---------------------------------------------------------------------------------------------


def slo_attainment(requests: Sequence[RequestMetrics]) -> float:
    """Share of requests that met their class's SLO (failures count as misses)."""
    if not requests:
        return float("nan")
    return sum(r.meets_slo for r in requests) / len(requests)


def goodput(requests: Sequence[RequestMetrics], duration_s: float) -> float:
    """Requests per second that met their SLO, over the measured window."""
    if duration_s <= 0:
        raise ValueError(f"duration_s: must be > 0, got {duration_s}")
    return sum(r.meets_slo for r in requests) / duration_s


def measured_window_s(requests: Sequence[RequestMetrics]) -> float:
    """From the first measured arrival to the last token of any measured request (or the last
    arrival, if later): the time over which goodput and throughput are averaged."""
    if not requests:
        return 0.0
    start = min(r.arrival_s for r in requests)
    ends = [r.arrival_s + r.e2e_s for r in requests if r.e2e_s is not None] + [r.arrival_s for r in requests]
    return max(ends) - start


def by_class(requests: Iterable[RequestMetrics]) -> dict[str, list[RequestMetrics]]:
    groups: dict[str, list[RequestMetrics]] = {}
    for r in requests:
        groups.setdefault(r.qos_class, []).append(r)
    return dict(sorted(groups.items()))


@dataclass(frozen=True, slots=True)
class Summary:
    """A run (or one class of it) in numbers; every percentile carries its sample count."""

    num_requests: int
    num_failed: int
    ttft: Percentiles
    tbt: Percentiles  # over every gap of every request, pooled
    tpot: Percentiles
    e2e: Percentiles
    normalized_latency: Percentiles
    fluidity_index: float  # mean over requests
    fluidity_index_p1: float  # the fluidity 99% of requests reach at least
    fluidity_share_ge_0_9: float
    slo_attainment: float
    goodput_rps: float
    throughput_rps: float
    output_tokens_per_s: float
    window_s: float


def summarize(requests: Sequence[RequestMetrics], window_s: float | None = None) -> Summary:
    window = measured_window_s(requests) if window_s is None else window_s
    fluid = [r.fluidity_index for r in requests if not math.isnan(r.fluidity_index)]
    done = [r for r in requests if r.ok]
    tokens = sum(r.num_output_tokens for r in requests)
    rate = (lambda n: n / window) if window > 0 else (lambda n: float("nan"))
    return Summary(
        num_requests=len(requests),
        num_failed=len(requests) - len(done),
        ttft=percentiles(r.ttft_s for r in requests if r.ttft_s is not None),
        tbt=percentiles(g for r in requests for g in r.tbt_s),
        tpot=percentiles(r.tpot_s for r in requests if r.tpot_s is not None),
        e2e=percentiles(r.e2e_s for r in done if r.e2e_s is not None),
        normalized_latency=percentiles(r.normalized_latency_s for r in done if r.normalized_latency_s is not None),
        fluidity_index=float(np.mean(fluid)) if fluid else float("nan"),
        fluidity_index_p1=percentile(fluid, 1),
        fluidity_share_ge_0_9=(sum(f >= 0.9 for f in fluid) / len(fluid)) if fluid else float("nan"),
        slo_attainment=slo_attainment(requests),
        goodput_rps=rate(sum(r.meets_slo for r in requests)),
        throughput_rps=rate(len(done)),
        output_tokens_per_s=rate(tokens),
        window_s=window,
    )


# ---------------------------------------------------------------------------------------------
# Capacity
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CapacityResult:
    """The highest rate found to meet the attainment target, and every probe that led there."""

    rate: float | None  # None: even the lowest rate tried missed the target
    target_attainment: float
    probes: list[tuple[float, float]] = field(default_factory=list)  # (rate, attainment), in order


def capacity_search(
    run_at_rate: Callable[[float], float],
    *,
    target_attainment: float = 0.9,
    start_rate: float = 1.0,
    min_rate: float = 1e-3,
    max_rate: float = 1e6,
    relative_tolerance: float = 0.05,
    max_probes: int = 30,
) -> CapacityResult:
    """Highest arrival rate whose SLO attainment is ≥ `target_attainment`.

    `run_at_rate(rate)` runs the workload at that rate and returns its attainment; it is the
    only effect, so a test can pass a plain function. The search brackets first — doubling
    from `start_rate` while the target holds, halving while it does not — then bisects the
    bracket until its width is within `relative_tolerance` of its lower end. It assumes
    attainment does not rise with load, as Etalon's capacity search does.
    """
    if not 0 < target_attainment <= 1:
        raise ValueError(f"target_attainment: must lie in (0, 1], got {target_attainment}")
    if not 0 < min_rate <= start_rate <= max_rate:
        raise ValueError(f"rates: need 0 < min_rate <= start_rate <= max_rate, got {min_rate}, {start_rate}, {max_rate}")
    if relative_tolerance <= 0:
        raise ValueError(f"relative_tolerance: must be > 0, got {relative_tolerance}")
    probes: list[tuple[float, float]] = []

    def passes(rate: float) -> bool:
        if len(probes) >= max_probes:
            raise RuntimeError(f"capacity_search: no answer within max_probes={max_probes}; probes so far {probes}")
        attainment = run_at_rate(rate)
        probes.append((rate, attainment))
        return attainment >= target_attainment

    rate = start_rate
    if passes(rate):
        low = rate
        while True:
            if low >= max_rate:
                return CapacityResult(low, target_attainment, probes)
            candidate = min(low * 2, max_rate)
            if not passes(candidate):
                high = candidate
                break
            low = candidate
    else:
        high = rate
        while True:
            candidate = high / 2
            if candidate < min_rate:
                return CapacityResult(None, target_attainment, probes)
            if passes(candidate):
                low = candidate
                break
            high = candidate
    while (high - low) > relative_tolerance * low:
        middle = (low + high) / 2
        if passes(middle):
            low = middle
        else:
            high = middle
    return CapacityResult(low, target_attainment, probes)

