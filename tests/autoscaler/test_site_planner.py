"""The power planner on hand-built power and demand, checked against brute force."""

from __future__ import annotations

import itertools

import pytest

from autoscaler.site_planner import ClassDemand, SiteInput, best_mode_mix, plan_power
from cluster.power_modes import Mode

FULL = Mode("full", power_w=400.0, throughput_fraction=1.0)
CAPPED = Mode("capped", power_w=250.0, throughput_fraction=0.7)


def site(name, power, *, max_replicas=8, latency=0.0):
    return SiteInput(name, power, (FULL, CAPPED), max_replicas, latency)


def test_capped_clocks_win_when_power_is_the_limit():
    # 1000 W: 2 full = 2.0; 1 full + 2 capped = 2.4; 4 capped = 2.8 (the best).
    counts, throughput, power = best_mode_mix(site("a", 1000.0))
    assert counts == {"full": 0, "capped": 4} and throughput == pytest.approx(2.8) and power == 1000.0


def test_full_clocks_win_when_replicas_are_the_limit():
    counts, throughput, _ = best_mode_mix(site("a", 10_000.0, max_replicas=3))
    assert counts == {"full": 3, "capped": 0} and throughput == pytest.approx(3.0)


def test_a_site_at_zero_power_gets_nothing():
    plan = plan_power([site("dark", 0.0), site("lit", 2000.0)], [ClassDemand("chat", rate_rps=2.0, cost_replica_s=0.5)])
    assert plan.site("dark").replicas == {"full": 0, "capped": 0}
    assert plan.shares["chat"] == {"dark": 0.0, "lit": 1.0}
    assert plan.goodput_rps == pytest.approx(2.0)


def test_traffic_follows_the_power_and_replicas_shrink_to_the_work():
    demand = [ClassDemand("chat", rate_rps=4.0, cost_replica_s=0.5)]  # 2 replica-units of work
    plan = plan_power([site("a", 3000.0), site("b", 3000.0, latency=20.0)], demand)
    assert plan.goodput_rps == pytest.approx(4.0)
    assert plan.shares["chat"]["a"] == pytest.approx(1.0)  # the nearer site, when it can take it all
    assert plan.site("a").capacity_rps_units >= 2.0 - 1e-9
    assert plan.site("b").replicas == {"full": 0, "capped": 0}  # no work: no power drawn


def test_a_latency_budget_keeps_a_class_off_a_distant_site():
    demands = [ClassDemand("interactive", 4.0, 1.0, latency_budget_ms=30.0), ClassDemand("batch", 4.0, 1.0)]
    plan = plan_power([site("near", 1250.0, latency=10.0), site("far", 5000.0, latency=80.0)], demands)
    assert plan.shares["interactive"]["far"] == 0.0
    assert plan.served_rps["interactive"] == pytest.approx(3.5)  # all the near site has: 5 capped
    assert plan.served_rps["batch"] == pytest.approx(4.0)  # served far away


def brute_force_goodput(sites, demands, step=0.25):
    """Best served rate over integer replica mixes and a grid of allocations."""
    best = 0.0
    caps = {s.name: best_mode_mix(s)[1] for s in sites}  # enumeration is exhaustive per site
    grids = [[k * step for k in range(int(d.rate_rps / step) + 1)] for d in demands for _ in sites]
    for x in itertools.product(*grids):
        x = [x[i * len(sites) : (i + 1) * len(sites)] for i in range(len(demands))]
        ok = all(sum(x[i][j] for j in range(len(sites))) <= d.rate_rps + 1e-9 for i, d in enumerate(demands))
        ok = ok and all(sum(x[i][j] * d.cost_replica_s for i, d in enumerate(demands)) <= caps[s.name] + 1e-9 for j, s in enumerate(sites))
        ok = ok and all(x[i][j] == 0 or s.latency_ms <= d.latency_budget_ms for i, d in enumerate(demands) for j, s in enumerate(sites))
        if ok:
            best = max(best, sum(d.weight * sum(x[i]) for i, d in enumerate(demands)))
    return best


@pytest.mark.parametrize(
    "powers, demands",
    [
        ((900.0, 500.0), [ClassDemand("a", 2.0, 0.8), ClassDemand("b", 1.5, 0.5)]),
        ((400.0, 0.0), [ClassDemand("a", 3.0, 0.5), ClassDemand("b", 1.0, 1.0, latency_budget_ms=5.0)]),
        ((1300.0, 650.0), [ClassDemand("a", 1.0, 2.0, weight=2.0), ClassDemand("b", 2.0, 1.0)]),
    ],
)
def test_the_plan_matches_brute_force_on_small_cases(powers, demands):
    sites = [site("s0", powers[0], max_replicas=4), site("s1", powers[1], max_replicas=4, latency=10.0)]
    plan = plan_power(sites, demands)
    weighted = sum(d.weight * plan.served_rps[d.name] for d in demands)
    best = brute_force_goodput(sites, demands)
    assert best - 1e-6 <= weighted <= best + 0.25 * max(d.weight for d in demands) * len(sites) + 1e-6
    for s in sites:  # never above a site's power
        assert plan.site(s.name).power_w <= s.available_power_w + 1e-9
