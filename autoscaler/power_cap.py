"""Fitting each site's pools under its caps: the replicas its power affords now (Heron's fast
reaction to a wind drop) and its installed GPUs (`max_replicas`).

The stage autoscaler sizes each pool for its own demand; when a site cannot run them all,
the replicas it can run are *allocated jointly* across its pools by water-filling: every
candidate replica (pool p's k-th) is worth the share of a replica of p's unmet need it would
cover, `min(1, need_p − k)`, plus a bonus while it is already running (a replica started now
serves nothing until its cold start is over), and the site keeps the most valuable ones. So
the stage with the most unmet work per replica gets the scarce GPUs, a warm replica is not
traded for a cold one for a small gain, and the next round, seeing the same loads, makes the
same choice instead of undoing it (ModServe: stages compete for one cluster's GPUs).

The first replica of every stage the topology needs, and of every pool with work, outranks
everything else: half a pipeline serves nothing, and an encoder pool with images waiting is
the only way those requests are served. Next come the replicas of pools that grew within their
cool-down, which another pool's ask may not take (only a lack of power may). When even those do not fit, the whole site goes dark (it would still
draw power). Power outranks a pool's minimum, and the reason says so.

Pure: plans and numbers in, a plan out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from autoscaler.site_planner import SiteInput, best_mode_mix
from cluster.records import Plan

# Ties (equal worth) go to the stage a request needs last: decode before prefill before vision.
_KEEP_ORDER = {"decode": 0, "colocated": 0, "prefill": 1, "vision": 2}
# Worth of a replica the policy asks for beyond the measured need (hysteresis, a reactive step,
# min_replicas): small, but more than nothing.
_BEYOND_NEED = 0.01


def affordable_replicas(site: SiteInput) -> int:
    counts, _, _ = best_mode_mix(site)
    return sum(counts.values())


def fit_to_power(
    plan: Plan,
    sites: Mapping[str, SiteInput],
    required_stages: frozenset[str],
    needs: Mapping[str, float] | None = None,
    warm_bonus: float = 0.3,
    protected: Mapping[str, int] | None = None,
) -> Plan:
    """`needs` (pool@site -> replicas its measured load needs at the target utilisation) sets
    each replica's worth; without it every replica the plan asks for is worth the same.
    `protected` (pool@site -> replicas) are kept before any other pool's second replica: a
    pool still in its cool-down after growing does not give replicas up to another pool's
    ask (only to a lack of power), so two pools do not trade replicas back and forth."""
    targets = list(plan.targets)
    for name, site in sites.items():
        mine = [i for i, t in enumerate(targets) if t.site == name]
        allowed = affordable_replicas(site)
        if sum(targets[i].desired for i in mine) <= allowed:
            continue
        required = [targets[i] for i in mine if targets[i].pool in required_stages and targets[i].desired > 0]
        dark = len(required) < len({targets[i].pool for i in mine if targets[i].pool in required_stages}) or len(required) > allowed
        sizes = {targets[i].pool: 0 for i in mine}
        if not dark:
            candidates = []
            for i in mine:
                t = targets[i]
                need = (needs or {}).get(t.key, float(t.desired))
                keep = min((protected or {}).get(t.key, 0), t.desired)
                for k in range(t.desired):
                    # Every pool the plan runs gets its first replica before any pool its second:
                    # an encoder pool with images waiting serves them or nobody does.
                    tier = 2 if k == 0 and (t.pool in required_stages or need > 0) else 1 if k < keep else 0
                    worth = max(_BEYOND_NEED, min(1.0, need - k)) + (warm_bonus if k < t.current else 0.0)
                    candidates.append((tier, worth, -k, -_KEEP_ORDER.get(t.pool, 9), t.pool))
            for *_, pool in sorted(candidates, reverse=True)[:allowed]:
                sizes[pool] += 1
        why = (
            f"power cap: {site.available_power_w:.0f} W affords {allowed} replicas at {name}"
            + ("; a required stage would have none, so the site goes dark" if dark else "; allocated jointly by unmet need")
        )
        for i in mine:
            t = targets[i]
            targets[i] = replace(t, desired=sizes[t.pool], reason=f"{why} (demand asked {t.desired}: {t.reason})")
    return replace(plan, targets=tuple(targets))
