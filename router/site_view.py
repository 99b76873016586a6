"""The ingress's picture of its sites, rebuilt from telemetry every half second: which sites
can take work now (live replicas of every stage the topology needs, power not below what
they draw), how long a request would wait at each (`SiteLoad`: the entry stage's queued
prefill tokens over its measured throughput, and how full its KV is), and how traffic should
be shared: each class as the power planner divided it (`RoutingPlan.shares`), or, before its
first plan, as the stage autoscaler sized each site.

Pure: a telemetry snapshot and the plan in, the inputs of `router.site_router` out.

The same picture says which sites are lost (`lost_sites`), for the reconcile loop to record
why: a site whose every node has left the cluster runs nothing and can place nothing, while
its replicas' heartbeats outlive them for their time-to-live.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cluster.records import Decision, Plan, RoutingPlan, TelemetrySnapshot, pool_key
from router.site_router import SiteLoad, SitePower

# Prefill tokens an entry replica processes per busy second until its heartbeats have measured it.
DEFAULT_PREFILL_TOKENS_PER_S = 2_000.0
# Below this busy fraction a replica's tokens per busy second is too noisy to use.
_MIN_BUSY = 0.05


@dataclass(frozen=True, slots=True)
class SiteView:
    shares: dict[str, dict[str, float]]  # class -> site -> weight
    power: dict[str, SitePower]  # only sites with live replicas of every required stage
    load: dict[str, SiteLoad] = field(default_factory=dict)  # site -> live load (the same sites as power)


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
    load = {site: site_load(snapshot.heartbeats, site, anchor) for site in power}
    if plan is not None:
        weights = {t.site: float(t.desired) for t in plan.targets if t.pool == anchor and t.site in sites}
    else:
        weights = {site: 1.0 for site in sites}
    shares = {}
    for c in classes:
        planned = {site: w for site, w in (routing.shares.get(c, {}) if routing else {}).items() if site in sites}
        shares[c] = planned if sum(planned.values()) > 0 else dict(weights)
    return SiteView(shares=shares, power=power, load=load)


def site_load(heartbeats, site: str, entry_stage: str, default_tokens_per_s: float = DEFAULT_PREFILL_TOKENS_PER_S) -> SiteLoad:
    """The wait at a site's entry stage: its queued prefill tokens over the tokens its entry
    replicas process per second together (each measured per busy second, else the default)."""
    entry = [h for h in heartbeats if h.site == site and h.stage == entry_stage]
    queued = sum(h.queued_prefill_tokens for h in entry)
    rate = sum(h.tokens_per_s / h.busy_fraction if h.busy_fraction >= _MIN_BUSY and h.tokens_per_s > 0 else default_tokens_per_s
               for h in entry)
    holders = [h for h in heartbeats if h.site == site and h.stage in ("decode", "colocated") and h.total_kv_blocks > 0]
    kv = sum(h.kv_occupancy for h in holders) / len(holders) if holders else 0.0
    return SiteLoad(wait_s=queued / rate if rate > 0 else 0.0, kv_occupancy=kv)


@dataclass(frozen=True, slots=True)
class SiteNodes:
    """The cluster's nodes that carry a site's resource (`site.<name>`): alive, and gone."""

    live: int
    gone: int


def lost_sites(nodes: Mapping[str, SiteNodes], heartbeats) -> dict[str, str]:
    """site -> why it is lost: nodes carried its resource and none that does is alive. A site
    that no node ever carried (one node serving every site without site resources) is not
    lost: nothing is known of where it runs."""
    lost = {}
    for site, n in nodes.items():
        if n.live == 0 and n.gone > 0:
            beats = sum(1 for h in heartbeats if h.site == site)
            echo = f"{beats} heartbeats of its replicas have yet to expire" if beats else "no heartbeats from its replicas"
            lost[site] = f"site {site} lost: no live node carries site.{site} ({n.gone} that did left the cluster); {echo}"
    return lost


def site_loss_decisions(
    before: Mapping[str, str],
    now: Mapping[str, str],
    pools: Iterable[str],
    current: Mapping[str, int],
    now_s: float,
) -> list[Decision]:
    """A decision for each pool of a site when the site is lost and when it is back (`before`
    and `now` from `lost_sites`), nothing while it stays as it was: every pool of a lost site
    is held at no replica whatever its plan says, since none can be placed."""
    pools = list(pools)
    decisions = []
    for site in sorted(now.keys() - before.keys()):
        decisions += [Decision("hold", pool_key(p, site), current.get(pool_key(p, site), 0), 0, now[site], now_s) for p in pools]
    for site in sorted(before.keys() - now.keys()):
        back = f"site {site} back: a live node carries site.{site} again"
        decisions += [Decision("hold", key, current.get(key, 0), current.get(key, 0), back, now_s)
                      for key in (pool_key(p, site) for p in pools)]
    return decisions
