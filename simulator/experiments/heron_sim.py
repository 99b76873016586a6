"""Running one policy of the Heron experiment and reading it per interval.

`HeronCluster` is the simulator's `SimCluster` with one thing the cluster spec cannot say:
each site's power is a step function of simulated time (interval k's power through window k;
`heron_sites.step_power`) rather than a trace replayed at a speed. Everything else —
admission, the controller's `plan_round`, site and replica choice, the engine's scheduler,
cold starts, batteries and power cuts — is the simulator's own.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import simulator.cluster as sim_cluster
from cluster.spec import ClusterSpec
from simulator.cluster import SimCluster, SimOptions
from simulator.cost_model import CostModel
from simulator.experiments.heron_sites import window_of
from simulator.metrics import cluster_report, meets_slo, summarize
from simulator.request import SimRequest
from simulator.scenario import network_for, options_for
from simulator.workload import TraceRequest


def cluster_routes(routing: str) -> bool:
    """Whether the simulator has this routing mode (`SimOptions` refuses any other)."""
    return routing in sim_cluster.ROUTINGS


class HeronCluster(SimCluster):
    """`SimCluster` whose sites' power follows the experiment's step functions."""

    def __init__(self, spec: ClusterSpec, cost: CostModel, options: SimOptions,
                 power_w: Mapping[str, Callable[[float], float]]) -> None:
        super().__init__(spec, cost, network_for(cost), options)
        for name, fn in power_w.items():
            site = self.sites[name]
            site.power_fn = fn
            site.available_w = fn(0.0)


@dataclass
class PolicyRun:
    name: str
    sim: HeronCluster
    requests: list[SimRequest]
    summary: dict[str, Any]
    cluster: dict[str, Any]
    wall_s: float


def run_policy(name: str, spec: ClusterSpec, trace: Sequence[TraceRequest], cost: CostModel, options: SimOptions,
               power_w: Mapping[str, Callable[[float], float]], *, duration_s: float, drain_s: float) -> PolicyRun:
    options = options_for(cost, options)
    started = time.perf_counter()
    sim = HeronCluster(spec, cost, options, power_w)
    requests = sim.run(trace, drain_s=drain_s)
    wall = time.perf_counter() - started
    return PolicyRun(name, sim, requests, summarize(requests, spec, duration_s=duration_s), cluster_report(sim), wall)


# -- reading a run per interval --------------------------------------------------------------------
def loss_kind(req: SimRequest) -> str | None:
    """Why a request was not served, in the experiment's categories (None when served)."""
    if req.outcome == "ok":
        return None
    reason = req.reason
    if reason.startswith("power cut"):
        return "power_cut"  # its replica went dark after the battery's ride-through
    if reason.startswith("no site has power") or reason.startswith("no colocated replica"):
        return "no_power"  # no powered site (or, routed statically, its site had no replica)
    if req.outcome == "rejected" and ("busy" in reason or "in flight" in reason):
        return "admission"  # QoS admission refused it (429)
    if reason.startswith("waited over"):
        return "backlog_timeout"
    if req.outcome == "unfinished":
        return "unfinished"
    return "other"


def per_interval(run: PolicyRun, spec: ClusterSpec, intervals: int, window_s: float) -> dict[str, Any]:
    """Per interval: requests offered and within SLO (per class), losses, where requests went,
    and each site's replicas (mean over the window's samples)."""
    slos = {c.name: (c.slo.ttft_s, c.slo.tbt_s) for c in spec.qos_classes}
    sites = [s.name for s in spec.sites]
    offered = np.zeros(intervals, dtype=int)
    good = np.zeros(intervals, dtype=int)
    good_by_class = {c: np.zeros(intervals, dtype=int) for c in slos}
    lost_power = np.zeros(intervals, dtype=int)
    routed = {s: np.zeros(intervals, dtype=int) for s in sites}
    for req in run.requests:
        k = window_of(req.arrival_s, window_s)
        if not 0 <= k < intervals:
            continue
        offered[k] += 1
        if meets_slo(req, *slos[req.trace.qos_class]):
            good[k] += 1
            good_by_class[req.trace.qos_class][k] += 1
        if loss_kind(req) in ("power_cut", "no_power"):
            lost_power[k] += 1
        if req.site in routed:
            routed[req.site][k] += 1
    replicas = {s: np.zeros(intervals) for s in sites}
    counts = np.zeros(intervals)
    for sample in run.sim.samples:
        k = window_of(sample["t"], window_s)
        if 0 <= k < intervals:
            counts[k] += 1
            for s in sites:
                replicas[s][k] += sum(sample[s]["replicas"].values())
    for s in sites:
        replicas[s] = np.divide(replicas[s], counts, out=np.zeros(intervals), where=counts > 0)
    return {"offered": offered.tolist(), "within_slo": good.tolist(),
            "within_slo_by_class": {c: v.tolist() for c, v in good_by_class.items()},
            "lost_to_power": lost_power.tolist(), "routed": {s: v.tolist() for s, v in routed.items()},
            "replicas": {s: np.round(v, 2).tolist() for s, v in replicas.items()}}


def breakdown(run: PolicyRun, spec: ClusterSpec) -> dict[str, Any]:
    """Per class: why requests missed (TTFT, TBT, or lost and why); per site: requests routed,
    served, within SLO."""
    slos = {c.name: (c.slo.ttft_s, c.slo.tbt_s) for c in spec.qos_classes}
    by_class: dict[str, Counter] = defaultdict(Counter)
    by_site: dict[str, Counter] = defaultdict(Counter)
    for req in run.requests:
        cls = req.trace.qos_class
        ttft_slo, tbt_slo = slos[cls]
        kind = loss_kind(req)
        ok = meets_slo(req, ttft_slo, tbt_slo)
        if kind is not None:
            by_class[cls][f"lost_{kind}"] += 1
        elif not ok:
            late = req.ttft_s is not None and req.ttft_s > ttft_slo
            by_class[cls]["missed_ttft" if late else "missed_tbt"] += 1
        else:
            by_class[cls]["within_slo"] += 1
        site = req.site or "(none)"
        by_site[site]["routed"] += 1
        by_site[site]["served"] += req.outcome == "ok"
        by_site[site]["within_slo"] += ok
        if kind is not None:
            by_site[site][f"lost_{kind}"] += 1
    return {"by_class": {c: dict(v) for c, v in sorted(by_class.items())},
            "by_site": {s: dict(v) for s, v in sorted(by_site.items())}}
