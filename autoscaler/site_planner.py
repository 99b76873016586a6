"""The slow timescale of power-aware serving (Heron): per site, how many replicas and in which
power mode, and what share of each class's traffic each site takes — chosen to maximise
goodput (requests served within their SLO) without drawing more than any site's power.

Method, in two exact steps:
1. Capacity per site. For each site, every split of its replicas between power modes that fits
   under its (forecast) power and its replica cap is enumerated — a site has at most a few
   dozen replicas and two or three modes — and the split with the most throughput is kept
   (ties: the one drawing least power).
2. Allocation. Serving is a transportation problem: class c sends x[c,s] requests/s to site s,
   costing `cost_c` replica-seconds each, within each site's capacity and each class's demand,
   and only to sites whose network latency fits the class's latency budget. A linear program
   (`scipy.optimize.linprog`) maximises priority-weighted served requests; ties go to the
   lower-latency site. Goodput is the served rate.
Finally each site keeps only the replicas its allocated work needs (the rest would draw power
for nothing), and shares are x[c,s] / Σ_s x[c,s].

Pure: plain data in, plain data out; no Ray, Redis, clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

from cluster.power_modes import Mode


@dataclass(frozen=True, slots=True)
class SiteInput:
    name: str
    available_power_w: float  # what the planner may assume over the next interval (forecast)
    modes: tuple[Mode, ...]
    max_replicas: int
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ClassDemand:
    name: str
    rate_rps: float  # arrivals per second
    cost_replica_s: float  # full-clock replica-seconds one request needs (its prompt/output mix)
    latency_budget_ms: float = math.inf  # network latency a site may add and still meet the SLO
    weight: float = 1.0  # priority: goodput of this class counts this much


@dataclass(frozen=True, slots=True)
class SitePlan:
    site: str
    replicas: dict[str, int]  # mode name -> replicas
    capacity_rps_units: float  # replica-seconds per second it can supply
    power_w: float
    reason: str


@dataclass(frozen=True, slots=True)
class PowerPlan:
    sites: tuple[SitePlan, ...]
    shares: dict[str, dict[str, float]]  # class -> site -> share of the class's traffic
    served_rps: dict[str, float]  # class -> requests/s served within SLO
    goodput_rps: float

    def site(self, name: str) -> SitePlan:
        return next(s for s in self.sites if s.site == name)


def best_mode_mix(site: SiteInput) -> tuple[dict[str, int], float, float]:
    """The split of replicas between modes with the most throughput under the site's power."""
    best: tuple[float, float, tuple[int, ...]] = (0.0, 0.0, (0,) * len(site.modes))
    budget = max(0.0, site.available_power_w)

    def walk(i: int, counts: list[int], power: float, total: int) -> None:
        nonlocal best
        if i == len(site.modes):
            throughput = sum(c * m.throughput_fraction for c, m in zip(counts, site.modes))
            if throughput > best[0] + 1e-12 or (abs(throughput - best[0]) <= 1e-12 and power < best[1]):
                best = (throughput, power, tuple(counts))
            return
        mode = site.modes[i]
        most = min(site.max_replicas - total, int((budget - power) // mode.power_w) if mode.power_w > 0 else site.max_replicas)
        for n in range(max(0, most) + 1):
            walk(i + 1, counts + [n], power + n * mode.power_w, total + n)

    walk(0, [], 0.0, 0)
    throughput, power, counts = best
    return {m.name: c for m, c in zip(site.modes, counts)}, throughput, power


def allocate(capacity: dict[str, float], sites: list[SiteInput], demands: list[ClassDemand]) -> np.ndarray:
    """x[c, s] requests/s, from the LP described in the module docstring."""
    n_c, n_s = len(demands), len(sites)
    if n_c == 0 or n_s == 0:
        return np.zeros((n_c, n_s))
    # Objective: maximise Σ w_c x_cs, with a tiny latency penalty as the tie-break.
    max_latency = max((s.latency_ms for s in sites), default=0.0) or 1.0
    c = np.array([[-(d.weight - 1e-6 * s.latency_ms / max_latency) for s in sites] for d in demands]).ravel()
    a_ub, b_ub = [], []
    for j, s in enumerate(sites):  # site capacity in replica-seconds per second
        row = np.zeros((n_c, n_s))
        row[:, j] = [d.cost_replica_s for d in demands]
        a_ub.append(row.ravel())
        b_ub.append(capacity[s.name])
    for i, d in enumerate(demands):  # no more than the class's demand
        row = np.zeros((n_c, n_s))
        row[i, :] = 1.0
        a_ub.append(row.ravel())
        b_ub.append(d.rate_rps)
    bounds = [(0.0, 0.0 if s.latency_ms > d.latency_budget_ms else None) for d in demands for s in sites]
    result = linprog(c, A_ub=np.array(a_ub), b_ub=np.array(b_ub), bounds=bounds, method="highs")
    if not result.success:
        raise RuntimeError(f"site allocation LP failed: {result.message}")
    return np.clip(result.x.reshape(n_c, n_s), 0.0, None)


def plan_power(sites: list[SiteInput], demands: list[ClassDemand]) -> PowerPlan:
    mixes = {s.name: best_mode_mix(s) for s in sites}
    capacity = {name: mix[1] for name, mix in mixes.items()}
    x = allocate(capacity, sites, demands)
    plans = []
    for j, site in enumerate(sites):
        needed = float(sum(x[i, j] * d.cost_replica_s for i, d in enumerate(demands)))
        counts, throughput, power = _trim(site, mixes[site.name][0], needed)
        reason = (
            f"{site.available_power_w:.0f} W available: up to {mixes[site.name][1]:.2f} replica-units; "
            f"allocated work needs {needed:.2f}, so {sum(counts.values())} replicas "
            f"({', '.join(f'{n} {m}' for m, n in counts.items() if n) or 'none'}) drawing {power:.0f} W"
        )
        plans.append(SitePlan(site.name, counts, throughput, power, reason))
    served = {d.name: float(x[i].sum()) for i, d in enumerate(demands)}
    shares = {
        d.name: {s.name: (float(x[i, j]) / served[d.name] if served[d.name] > 0 else 0.0) for j, s in enumerate(sites)}
        for i, d in enumerate(demands)
    }
    return PowerPlan(tuple(plans), shares, served, float(sum(served.values())))


def _trim(site: SiteInput, counts: dict[str, int], needed: float) -> tuple[dict[str, int], float, float]:
    """Drop replicas the allocated work does not need, least efficient (throughput per watt) first."""
    counts = dict(counts)
    modes = sorted(site.modes, key=lambda m: m.throughput_fraction / m.power_w)
    for mode in modes:
        while counts[mode.name] > 0:
            remaining = sum(counts[m.name] * m.throughput_fraction for m in site.modes) - mode.throughput_fraction
            if remaining + 1e-9 < needed:
                break
            counts[mode.name] -= 1
    throughput = sum(counts[m.name] * m.throughput_fraction for m in site.modes)
    power = sum(counts[m.name] * m.power_w for m in site.modes)
    return counts, throughput, power
