"""Fitting each site's pools under the power it has now (Heron's fast reaction to a wind drop).

The stage autoscaler sizes pools for demand; this caps the result by power: a site may run no
more replicas than its best mode mix affords (`site_planner.best_mode_mix`). When a site is
over, the largest pool gives up a replica first, and when a stage the topology needs (prefill
and decode, or colocated) would reach zero, the whole site goes dark: half a pipeline serves
nothing and still draws power. Power outranks a pool's minimum, and the reason says so.

Pure: plans and numbers in, a plan out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from autoscaler.site_planner import SiteInput, best_mode_mix
from cluster.records import Plan, PoolTarget

# Shed order among equally large pools: what a request needs last goes first.
_SHED_ORDER = {"vision": 0, "prefill": 1, "decode": 2, "colocated": 3}


def affordable_replicas(site: SiteInput) -> int:
    counts, _, _ = best_mode_mix(site)
    return sum(counts.values())


def fit_to_power(plan: Plan, sites: Mapping[str, SiteInput], required_stages: frozenset[str]) -> Plan:
    targets = list(plan.targets)
    for name, site in sites.items():
        mine = [i for i, t in enumerate(targets) if t.site == name]
        allowed = affordable_replicas(site)
        total = sum(targets[i].desired for i in mine)
        if total <= allowed:
            continue
        sizes = {targets[i].pool: targets[i].desired for i in mine}
        while sum(sizes.values()) > allowed:
            pool = max(sizes, key=lambda p: (sizes[p], -_SHED_ORDER.get(p, 9)))
            sizes[pool] -= 1
        dark = any(sizes.get(stage, 1) == 0 for stage in required_stages if stage in sizes)
        why = (
            f"power cap: {site.available_power_w:.0f} W affords {allowed} replicas at {name}"
            + ("; a required stage would have none, so the site goes dark" if dark else "")
        )
        for i in mine:
            t = targets[i]
            desired = 0 if dark else sizes[t.pool]
            targets[i] = replace(t, desired=desired, reason=f"{why} (demand asked {t.desired}: {t.reason})")
    return replace(plan, targets=tuple(targets))
