"""Each stage's load, measured on its own signal (ModServe: stages have different bottlenecks
and are scaled independently). Pure: plain records in, numbers and sentences out.

A load is expressed in replica-equivalents: how many replicas the work would keep fully busy.
The policy divides it by the target utilisation to size the pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from autoscaler.config import AutoscalerConfig, ClassSLO, PoolConfig
from cluster.records import ReplicaHeartbeat, RequestRecord


@dataclass(frozen=True, slots=True)
class Load:
    replicas: float  # replica-equivalents of work at full utilisation
    detail: str  # the measurements behind it, for the plan's reason


def recent_requests(
    requests: Iterable[RequestRecord], site: str, stage: str, now_s: float, window_s: float
) -> list[RequestRecord]:
    """Requests at `site` that went through `stage` within the window. Rejected requests never
    reached a pool, so they load none."""
    since = now_s - window_s
    return [
        r for r in requests
        if r.site == site and stage in r.stages and since < r.timestamp_s <= now_s and r.outcome != "rejected"
    ]


def vision_load(
    heartbeats: Sequence[ReplicaHeartbeat], recent: Sequence[RequestRecord], pool: PoolConfig, config: AutoscalerConfig
) -> Load:
    """Images, not requests (ModServe: images per request are heavy-tailed), sized like prefill:
    clear the images queued at the replicas within the TTFT SLO while keeping up with the rate
    of images served, R ≥ Q·c/T + λ·c for c seconds per image.

    The queue is demand the served rate cannot show: a saturated pool serves only its own
    throughput, and under a burst that outlasts the request window it may have served
    nothing yet while hundreds of images wait (the heartbeats' `queued_images`)."""
    rate = sum(r.num_images for r in recent) / config.request_window_s
    queued = sum(h.queued_images for h in heartbeats)
    cost = config.encode_s_per_image
    slo = ttft_target(recent, pool, config)
    drain = drain_s(slo, config)
    return Load(
        queued * cost / drain + rate * cost,
        f"{queued} images queued, to drain within {drain:.3g} s of the {slo:g} s TTFT SLO, and {rate:.2f} images/s "
        f"served, × {cost:.3f} s to encode each",
    )


def drain_s(ttft_slo_s: float, config: AutoscalerConfig) -> float:
    """How soon a stage's queue must drain: within the TTFT SLO less a new replica's cold start
    (replicas added now help only after it), but no less than a share of the SLO."""
    return max(ttft_slo_s - config.cold_start_s, config.min_drain_share * ttft_slo_s)


def ttft_target(recent: Sequence[RequestRecord], pool: PoolConfig, config: AutoscalerConfig) -> float:
    """The TTFT a stage's queue must clear within: the tightest SLO among the classes its recent
    requests belong to (an encoder pool that serves only a relaxed image class is not held to
    the text class's target), else the pool's own (the tightest of all classes)."""
    seen = {r.qos_class for r in recent} & config.class_slos.keys()
    return min((config.class_slos[c].ttft_s for c in seen), default=pool.ttft_slo_s)


def prefill_capacity(heartbeats: Sequence[ReplicaHeartbeat], config: AutoscalerConfig) -> tuple[float, str]:
    """Prefill tokens one replica processes per second of prefilling.

    Measured per replica as prefill tokens over the step time attributed to prefill
    (`workers.engine.step_rates`): plain tokens per busy second would count a colocated
    replica's decode steps as prefill time and read a capacity tens of times too low. A replica
    busy too little to measure, or with no prefill in its window, leaves the profiled rate in.
    """
    measured = [h.prefill_tokens_per_busy_s for h in heartbeats
                if h.prefill_tokens_per_busy_s > 0 and h.busy_fraction >= config.min_busy_for_measurement]
    if measured:
        return sum(measured) / len(measured), "measured"
    return config.prefill_tokens_per_s, "profiled"


def prefill_load(
    heartbeats: Sequence[ReplicaHeartbeat], recent: Sequence[RequestRecord], pool: PoolConfig, config: AutoscalerConfig
) -> Load:
    """Replicas needed to clear the queued prefill tokens within the TTFT SLO while keeping up
    with arriving prompt tokens: R·μ·T ≥ Q + λ·T, so R ≥ Q/(μ·T) + λ/μ (issue 5)."""
    capacity, how = prefill_capacity(heartbeats, config)
    queued = sum(h.queued_prefill_tokens for h in heartbeats)
    arriving = sum(r.prompt_tokens for r in recent) / config.request_window_s
    slo = ttft_target(recent, pool, config)
    drain = drain_s(slo, config)
    load = queued / (capacity * drain) + arriving / capacity
    return Load(
        load,
        f"{queued} queued prefill tokens to drain within {drain:.3g} s of the {slo:g} s TTFT SLO and {arriving:.0f} tokens/s "
        f"arriving, at {capacity:.0f} tokens/s per replica ({how})",
    )


def decode_load(heartbeats: Sequence[ReplicaHeartbeat], pool: PoolConfig) -> Load:
    """The tighter of KV demand and estimated TBT against the TBT SLO.

    KV blocks bound how many sequences a replica can hold; TBT grows with the batch. A
    replica running B sequences at μ tokens per busy second gives each a token every B/μ s.
    KV demand counts the hand-offs waiting for KV admission too (a decode replica's queued
    requests), each at the blocks its running sequences hold on average: occupancy alone
    stops at 100% while the queue of prefilled requests grows behind it.
    No arrival-rate term: decode throughput grows with batch size, so a rate measured at a
    small batch would overstate the replicas needed (Sarathi-Serve, decode is memory-bound).
    """
    kv = sum(_kv_demand(h) for h in heartbeats)
    waiting = sum(h.queued_requests for h in heartbeats)
    tbt_sum, tbt_max = 0.0, 0.0
    for h in heartbeats:
        if h.tokens_per_s > 0 and h.busy_fraction > 0:
            tbt = h.running_requests * h.busy_fraction / h.tokens_per_s
            tbt_sum, tbt_max = tbt_sum + tbt, max(tbt_max, tbt)
    tbt_load = tbt_sum / pool.tbt_slo_s
    occupancy = kv / len(heartbeats) if heartbeats else 0.0
    detail = (
        f"KV occupancy {occupancy:.0%} with {waiting} hand-offs waiting ({kv:.2f} replicas of KV), estimated TBT "
        f"up to {tbt_max * 1e3:.0f} ms against the {pool.tbt_slo_s * 1e3:.0f} ms TBT SLO"
    )
    return Load(max(kv, tbt_load), detail)


def _kv_demand(h: ReplicaHeartbeat) -> float:
    """Replicas' worth of KV this replica's running and waiting sequences need."""
    if h.queued_requests == 0 or h.stage != "decode":
        return h.kv_occupancy
    if h.running_requests == 0:
        return max(h.kv_occupancy, 1.0)  # nothing admitted though work waits: full
    return h.kv_occupancy * (h.running_requests + h.queued_requests) / h.running_requests


def colocated_load(
    heartbeats: Sequence[ReplicaHeartbeat], recent: Sequence[RequestRecord], pool: PoolConfig, config: AutoscalerConfig
) -> Load:
    """A colocated replica does both, so it needs the larger of the two (Sarathi-Serve)."""
    prefill = prefill_load(heartbeats, recent, pool, config)
    decode = decode_load(heartbeats, pool)
    bound = "prefill" if prefill.replicas >= decode.replicas else "decode"
    return Load(
        max(prefill.replicas, decode.replicas),
        f"{bound}-bound: prefill needs {prefill.replicas:.2f} ({prefill.detail}); "
        f"decode needs {decode.replicas:.2f} ({decode.detail})",
    )


def slo_misses(
    recent: Sequence[RequestRecord], stage: str, pool: PoolConfig, config: AutoscalerConfig
) -> tuple[int, int]:
    """(misses, judged) among finished requests: vision and prefill answer for TTFT, decode for
    P99 TBT (the Sarathi-Serve SLO), colocated for both. A class without its own SLO is held
    to the pool's."""
    misses = judged = 0
    for r in recent:
        if r.outcome != "ok":
            continue
        slo = config.class_slos.get(r.qos_class, ClassSLO(pool.ttft_slo_s, pool.tbt_slo_s))
        ttft_miss = r.ttft_s is not None and r.ttft_s > slo.ttft_s
        tbt_miss = r.tbt_p99_s is not None and r.tbt_p99_s > slo.tbt_s
        if stage in ("vision", "prefill"):
            missed, measured = ttft_miss, r.ttft_s is not None
        elif stage == "decode":
            missed, measured = tbt_miss, r.tbt_p99_s is not None
        else:
            missed, measured = ttft_miss or tbt_miss, r.ttft_s is not None or r.tbt_p99_s is not None
        judged += measured
        misses += missed
    return misses, judged
