"""The live power planner on hand-built power, demand and plans: forecasts, demand per class,
shares that follow power (a site going to zero included), decisions, and mode assignment."""

from __future__ import annotations

import math

import pytest

from autoscaler.power_planner import (
    PlannerSettings,
    class_demands,
    forecast,
    needs_replan,
    plan_routing,
    planning_power,
    routing_decisions,
)
from autoscaler.site_planner import ClassDemand, SiteInput
from cluster.power_modes import Mode, mode_for_replica
from cluster.records import RequestRecord

FULL = Mode("full", 300.0, 1.0)
CAPPED = Mode("capped", 180.0, 0.7)


def site(name: str, watts: float, *, latency_ms: float = 0.0, max_replicas: int = 4) -> SiteInput:
    return SiteInput(name, watts, (FULL, CAPPED), max_replicas, latency_ms)


def request(qos_class: str, t: float, prompt: int = 100, output: int = 100) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{t}", qos_class=qos_class, site="a", pool_path="prefill>decode", ttft_s=0.1,
        tbt_p50_s=0.01, tbt_p99_s=0.02, prompt_tokens=prompt, output_tokens=output, outcome="ok", timestamp_s=t,
    )


def test_persistence_forecasts_the_last_reading_and_smoothing_lags_it():
    assert forecast([100.0, 400.0], PlannerSettings(forecaster="persistence")) == 400.0
    assert forecast([100.0, 400.0], PlannerSettings(forecaster="ewma", ewma_alpha=0.5)) == 250.0
    with pytest.raises(ValueError, match="no readings"):
        forecast([], PlannerSettings())
    with pytest.raises(ValueError, match="forecaster"):
        PlannerSettings(forecaster="oracle")


def test_the_plan_counts_on_the_lower_of_power_now_and_its_forecast():
    smoothing = PlannerSettings(forecaster="ewma", ewma_alpha=0.5)
    # Rising wind: the forecast lags behind, the plan counts on the forecast.
    assert planning_power(900.0, [100.0], smoothing) == 500.0
    # Falling wind: power now is lower than the smoothed forecast.
    assert planning_power(100.0, [900.0], smoothing) == 100.0


def test_demand_per_class_is_its_recent_rate_and_token_cost():
    settings = PlannerSettings(request_window_s=10.0, prefill_tokens_per_s=600.0, decode_tokens_per_s=200.0)
    records = [request("interactive", 95.0 + i, 300, 100) for i in range(5)] + [request("batch", 50.0)]  # batch: too old
    demands = {d.name: d for d in class_demands(records, {"interactive": 1.0, "batch": 0.5}, 100.0, settings)}
    assert demands["interactive"].rate_rps == pytest.approx(0.5)
    assert demands["interactive"].cost_replica_s == pytest.approx(1.0)  # 300 prompt at 600/s, 100 output at 200/s
    assert demands["batch"].rate_rps == 0.0
    assert demands["batch"].weight == 0.5
    assert demands["interactive"].latency_budget_ms == math.inf


def test_shares_follow_capacity_and_a_dark_site_gets_none():
    demands = [ClassDemand("interactive", rate_rps=3.0, cost_replica_s=1.0)]
    plan = plan_routing([site("a", 1200.0), site("b", 0.0)], demands, now_s=10.0)
    assert plan.shares["interactive"] == {"a": 1.0, "b": 0.0}
    assert plan.modes["b"] == {"full": 0, "capped": 0}
    assert plan.goodput_rps == pytest.approx(3.0)
    assert plan.planned_power_w == {"a": 1200.0, "b": 0.0}
    # Demand beyond one site's capacity spills over to the other.
    spill = plan_routing([site("a", 600.0), site("b", 1200.0, latency_ms=5.0)], [ClassDemand("interactive", 5.0, 1.0)], 10.0)
    assert spill.shares["interactive"]["a"] > 0 and spill.shares["interactive"]["b"] > 0
    assert sum(spill.shares["interactive"].values()) == pytest.approx(1.0)


def test_a_class_without_traffic_is_spread_by_capacity():
    plan = plan_routing([site("a", 1200.0), site("b", 600.0)], [ClassDemand("batch", 0.0, 1.0)], 0.0)
    shares = plan.shares["batch"]
    # 1200 W: 4 full replicas (4.0 units); 600 W: 3 capped (2.1 units) beat 2 full (2.0).
    assert shares["a"] / shares["b"] == pytest.approx(4.0 / 2.1)
    assert sum(shares.values()) == pytest.approx(1.0)
    # Nowhere powered: all zero, and the site router then finds no site.
    dark = plan_routing([site("a", 0.0)], [ClassDemand("batch", 0.0, 1.0)], 0.0)
    assert dark.shares["batch"] == {"a": 0.0}


def test_a_latency_budget_keeps_a_class_away_from_a_far_site():
    demands = [ClassDemand("interactive", 1.0, 1.0, latency_budget_ms=50.0)]
    plan = plan_routing([site("near", 300.0), site("far", 1200.0, latency_ms=200.0)], demands, 0.0)
    assert plan.shares["interactive"] == {"near": 1.0, "far": 0.0}


def test_modes_are_the_sites_best_affordable_mix():
    # 660 W: 2 full (600 W, 2.0 units) or 1 full + 2 capped (660 W, 2.4 units) or 3 capped (540 W, 2.1).
    plan = plan_routing([site("a", 660.0)], [ClassDemand("interactive", 1.0, 1.0)], 0.0)
    assert plan.modes["a"] == {"full": 1, "capped": 2}


def test_replans_when_due_or_when_power_leaves_what_the_plan_assumed():
    settings = PlannerSettings(interval_s=30.0, replan_drop_fraction=0.9)
    plan = plan_routing([site("a", 1000.0)], [ClassDemand("interactive", 1.0, 1.0)], now_s=100.0)
    assert needs_replan(None, {"a": 1000.0}, 100.0, settings) == "no plan yet"
    assert needs_replan(plan, {"a": 1000.0}, 110.0, settings) is None
    assert needs_replan(plan, {"a": 950.0}, 110.0, settings) is None  # within 10 %
    assert "fell to 500 W" in needs_replan(plan, {"a": 500.0}, 110.0, settings)
    assert "rose to 2000 W" in needs_replan(plan, {"a": 2000.0}, 110.0, settings)
    assert "interval" in needs_replan(plan, {"a": 1000.0}, 130.0, settings)


def test_decisions_name_every_share_that_moved_and_every_mode_change():
    demands = [ClassDemand("interactive", 2.0, 1.0)]
    before = plan_routing([site("a", 1200.0), site("b", 1200.0, latency_ms=5.0)], demands, 0.0)
    after = plan_routing([site("a", 0.0), site("b", 660.0, latency_ms=5.0)], demands, 10.0)
    decisions = routing_decisions(before, after, "site a power fell", [site("a", 0.0), site("b", 660.0, latency_ms=5.0)])
    reroutes = {d.target: d for d in decisions if d.kind == "reroute"}
    assert reroutes["interactive@b"].after == 100
    assert "site a power fell" in reroutes["interactive@b"].reason
    modes = {d.target: d for d in decisions if d.kind == "power_mode"}
    assert modes["b"].before == 0 and modes["b"].after == 2  # 1 full + 2 capped at 660 W
    # The same plan again decides nothing.
    assert routing_decisions(after, after, "interval", [site("a", 0.0), site("b", 660.0)]) == []


def test_every_replica_computes_the_same_mode_assignment():
    live = ["hb:prefill@a:r2", "hb:decode@a:r1", "hb:prefill@a:r3", "hb:decode@a:r4"]
    counts = {"full": 1, "capped": 2}
    assigned = [mode_for_replica(r, live, (FULL, CAPPED), counts).name for r in sorted(live)]
    assert assigned == ["full", "capped", "capped", "capped"]  # the fourth is beyond the plan: least power
    assert sum(m == "full" for m in assigned) == 1
    # A replica not yet in the live list still gets a deterministic mode.
    assert mode_for_replica("hb:decode@a:r0", live, (FULL, CAPPED), counts).name == "full"
