"""What the operator dashboard shows, built from one telemetry snapshot, the plan, the recent
decisions and the spec.

Pure (no Redis, no Ray, no clock: `now_s` comes in), so hand-built records test it and the
same numbers reach the page and Prometheus (`controller/metrics.py` reads `pool_rows`,
`site_rows` and `class_rows` too). The result is plain JSON: no NaN or infinity, which
browsers' `JSON.parse` refuses — an unknown figure is `null`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cluster.records import Decision, Plan, ReplicaHeartbeat, RequestRecord, RoutingPlan, TelemetrySnapshot, pool_key
from cluster.spec import ClusterSpec
from controller.status import slo_attainment

STATS_WINDOW_S = 300.0  # latency percentiles and SLO attainment: the last five minutes
RATE_WINDOW_S = 10.0  # request rate: short, so a burst shows at once
POWER_REASON = "power cap"  # how `autoscaler/power_cap.py` starts its reasons
POWER_KINDS = frozenset({"reroute", "power_mode"})  # the power planner's own decisions


@dataclass(frozen=True, slots=True)
class PoolRow:
    """One pool at one site: what the plan wants against what the heartbeats show."""

    pool: str
    site: str
    running: int  # replicas with a live heartbeat
    desired: int | None  # None: no plan yet, or the plan does not name this pool@site
    reason: str | None
    queued_requests: int
    running_requests: int
    queued_prefill_tokens: int
    kv_occupancy: float | None  # None: no replica with a KV cache reported (vision)
    tokens_per_s: float
    busy_fraction: float | None
    power_w: float

    @property
    def key(self) -> str:
        return pool_key(self.pool, self.site)


@dataclass(frozen=True, slots=True)
class SiteRow:
    site: str
    available_w: float | None  # None: no reading yet (a meter that has not reported)
    drawn_w: float  # the sum of its replicas' estimated draw
    source: str | None
    running: int


@dataclass(frozen=True, slots=True)
class ClassRow:
    """Latency and SLO attainment of one QoS class over the stats window."""

    qos_class: str
    slo_ttft_s: float
    slo_tbt_s: float
    requests: int
    within_slo: int
    attainment: float | None
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    tbt_p50_s: float | None  # the median of the requests' median gaps
    tbt_p99_s: float | None  # the 99th percentile of the requests' 99th-percentile gaps
    rate_per_s: float


def pool_rows(snapshot: TelemetrySnapshot, plan: Plan | None, spec: ClusterSpec) -> list[PoolRow]:
    """Every pool@site of the spec in its order, then any other that telemetry or the plan
    names (a pool of an older spec still running), so nothing live is hidden."""
    keys = [(pool, site.name) for site in spec.sites for pool in spec.pools]
    seen = set(keys)
    extra = [(h.pool, h.site) for h in snapshot.heartbeats] + [(t.pool, t.site) for t in (plan.targets if plan else ())]
    for key in extra:
        if key not in seen:
            seen.add(key)
            keys.append(key)
    targets = {t.key: t for t in plan.targets} if plan else {}
    by_key: dict[tuple[str, str], list[ReplicaHeartbeat]] = {}
    for hb in snapshot.heartbeats:
        by_key.setdefault((hb.pool, hb.site), []).append(hb)
    rows = []
    for pool, site in keys:
        beats = by_key.get((pool, site), [])
        target = targets.get(pool_key(pool, site))
        total_blocks = sum(h.total_kv_blocks for h in beats if h.total_kv_blocks > 0)
        free_blocks = sum(h.free_kv_blocks for h in beats if h.total_kv_blocks > 0)
        rows.append(PoolRow(
            pool=pool,
            site=site,
            running=len(beats),
            desired=target.desired if target else None,
            reason=target.reason if target else None,
            queued_requests=sum(h.queued_requests for h in beats),
            running_requests=sum(h.running_requests for h in beats),
            queued_prefill_tokens=sum(h.queued_prefill_tokens for h in beats),
            kv_occupancy=(total_blocks - free_blocks) / total_blocks if total_blocks else None,
            tokens_per_s=sum(h.tokens_per_s for h in beats),
            busy_fraction=sum(h.busy_fraction for h in beats) / len(beats) if beats else None,
            power_w=sum(h.power_w for h in beats),
        ))
    return rows


def site_rows(snapshot: TelemetrySnapshot, spec: ClusterSpec) -> list[SiteRow]:
    names = [s.name for s in spec.sites]
    names += sorted({h.site for h in snapshot.heartbeats} - set(names))
    rows = []
    for name in names:
        power = snapshot.site_power.get(name)
        beats = [h for h in snapshot.heartbeats if h.site == name]
        rows.append(SiteRow(
            site=name,
            available_w=power.available_w if power else None,
            drawn_w=sum(h.power_w for h in beats),
            source=power.source if power else None,
            running=len(beats),
        ))
    return rows


def recent(records: Iterable[RequestRecord], now_s: float, window_s: float) -> list[RequestRecord]:
    return [r for r in records if now_s - window_s <= r.timestamp_s <= now_s]


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


def class_rows(snapshot: TelemetrySnapshot, spec: ClusterSpec, now_s: float) -> list[ClassRow]:
    """Per class over the stats window; SLO attainment is `pavana status`'s definition
    (finished, TTFT and P99 TBT within the class's targets)."""
    window = recent(snapshot.requests, now_s, STATS_WINDOW_S)
    latest = recent(snapshot.requests, now_s, RATE_WINDOW_S)
    attainment = {a.qos_class: a for a in slo_attainment(tuple(window), spec)}
    rows = []
    for qos in spec.qos_classes:
        mine = [r for r in window if r.qos_class == qos.name]
        a = attainment[qos.name]
        rows.append(ClassRow(
            qos_class=qos.name,
            slo_ttft_s=qos.slo.ttft_s,
            slo_tbt_s=qos.slo.tbt_s,
            requests=a.requests,
            within_slo=a.within_slo,
            attainment=a.within_slo / a.requests if a.requests else None,
            ttft_p50_s=_percentile([r.ttft_s for r in mine if r.ttft_s is not None], 50),
            ttft_p99_s=_percentile([r.ttft_s for r in mine if r.ttft_s is not None], 99),
            tbt_p50_s=_percentile([r.tbt_p50_s for r in mine if r.tbt_p50_s is not None], 50),
            tbt_p99_s=_percentile([r.tbt_p99_s for r in mine if r.tbt_p99_s is not None], 99),
            rate_per_s=sum(1 for r in latest if r.qos_class == qos.name) / RATE_WINDOW_S,
        ))
    return rows


def decision_source(decision: Decision) -> str:
    """Which planner made a decision: power (the planner's reroutes and mode changes, and the
    power cap's shedding, Heron's two timescales) or the stage autoscaler."""
    return "power" if decision.kind in POWER_KINDS or decision.reason.startswith(POWER_REASON) else "autoscaler"


def _finite(value: Any) -> Any:
    """JSON-safe: non-finite floats become None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def build_state(
    snapshot: TelemetrySnapshot,
    plan: Plan | None,
    decisions: Sequence[Decision],
    spec: ClusterSpec,
    now_s: float,
    routing: RoutingPlan | None = None,
) -> dict[str, Any]:
    """The dashboard's JSON: pools × sites, power per site, request rate, latency and SLO
    attainment per class, the power planner's traffic shares and power modes, and the latest
    decisions (newest first) with their reasons."""
    latest = recent(snapshot.requests, now_s, RATE_WINDOW_S)
    outcomes: dict[str, int] = {}
    for r in recent(snapshot.requests, now_s, STATS_WINDOW_S):
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    state = {
        "now_s": now_s,
        "telemetry": {"taken_at_s": snapshot.taken_at_s, "stale": snapshot.stale, "age_s": snapshot.age_s},
        "model": spec.model.name,
        "topology": spec.topology,
        "sites": [asdict(row) for row in site_rows(snapshot, spec)],
        "pools": [{**asdict(row), "key": row.key} for row in pool_rows(snapshot, plan, spec)],
        "requests": {
            "rate_per_s": len(latest) / RATE_WINDOW_S,
            "rate_window_s": RATE_WINDOW_S,
            "stats_window_s": STATS_WINDOW_S,
            "outcomes": outcomes,
        },
        "classes": [asdict(row) for row in class_rows(snapshot, spec, now_s)],
        "plan": None if plan is None else {"timestamp_s": plan.timestamp_s, "age_s": now_s - plan.timestamp_s},
        "routing": None if routing is None else {
            "age_s": now_s - routing.timestamp_s,
            "shares": [{"qos_class": c, "site": site, "share": share} for c, by_site in sorted(routing.shares.items()) for site, share in sorted(by_site.items())],
            "modes": [{"site": site, "modes": dict(modes), "planned_power_w": routing.planned_power_w.get(site)} for site, modes in sorted(routing.modes.items())],
            "goodput_rps": routing.goodput_rps,
        },
        "decisions": [
            {**asdict(d), "source": decision_source(d)}
            for d in sorted(decisions, key=lambda d: d.timestamp_s, reverse=True)
        ],
    }
    return _finite(state)
