"""The ingress's picture of its sites, rebuilt from telemetry every half second: which sites
can take work now (live replicas of every stage the topology needs, power not below what
they draw) and how traffic should be shared: each class as the power planner divided it
(`RoutingPlan.shares`), or, before its first plan, as the stage autoscaler sized each site.

Pure: a telemetry snapshot and the plan in, the inputs of `router.site_router` out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cluster.records import Plan, RoutingPlan, TelemetrySnapshot
from router.site_router import SitePower


@dataclass(frozen=True, slots=True)
class SiteView:
    shares: dict[str, dict[str, float]]  # class -> site -> weight
    power: dict[str, SitePower]  # only sites with live replicas of every required stage


def build_view(
    snapshot: TelemetrySnapshot,
    plan: Plan | None,
    *,
    sites: dict[str, float],  # site -> network latency (ms)
    classes: list[str],
    required_stages: frozenset[str],
    routing: RoutingPlan | None = None,
) -> SiteView:
    stages_up: dict[str, set[str]] = {s: set() for s in sites}
    drawn: dict[str, float] = {s: 0.0 for s in sites}
    for hb in snapshot.heartbeats:
        if hb.site in sites:
            stages_up[hb.site].add(hb.stage)
            drawn[hb.site] += hb.power_w
    power = {
        site: SitePower(
            available_w=snapshot.site_power[site].available_w if site in snapshot.site_power else math.inf,
            drawn_w=drawn[site],
            latency_ms=latency,
        )
        for site, latency in sites.items()
        if required_stages <= stages_up[site]
    }
    anchor = "colocated" if "colocated" in required_stages else "prefill"
    if plan is not None:
        weights = {t.site: float(t.desired) for t in plan.targets if t.pool == anchor and t.site in sites}
    else:
        weights = {site: 1.0 for site in sites}
    shares = {}
    for c in classes:
        planned = {site: w for site, w in (routing.shares.get(c, {}) if routing else {}).items() if site in sites}
        shares[c] = planned if sum(planned.values()) > 0 else dict(weights)
    return SiteView(shares=shares, power=power)
