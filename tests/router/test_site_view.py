"""The ingress's picture of its sites, built from hand-made telemetry: only sites with every
required stage live can take work, and shares come from the power planner's routing plan when
there is one, else from the stage plan's sizes."""

from __future__ import annotations

from cluster.records import Plan, PoolTarget, ReplicaHeartbeat, RoutingPlan, SitePower, TelemetrySnapshot
from router.site_view import SiteNodes, build_view, lost_sites, site_loss_decisions

SITES = {"a": 0.0, "b": 5.0, "c": 9.0}
REQUIRED = frozenset({"prefill", "decode"})


def hb(stage: str, site: str, power_w: float = 100.0) -> ReplicaHeartbeat:
    return ReplicaHeartbeat(pool=stage, stage=stage, site=site, replica_id=f"{stage}-{site}", queued_requests=0,
                            running_requests=0, queued_prefill_tokens=0, free_kv_blocks=1, total_kv_blocks=1,
                            tokens_per_s=0.0, busy_fraction=0.0, power_w=power_w, timestamp_s=0.0)


SNAPSHOT = TelemetrySnapshot(
    heartbeats=(hb("prefill", "a"), hb("decode", "a"), hb("prefill", "b"), hb("decode", "b"), hb("prefill", "c")),
    site_power={"a": SitePower("a", 500.0, 0.0, "meter"), "b": SitePower("b", 150.0, 0.0, "meter")},
)
PLAN = Plan(targets=(PoolTarget("prefill", "a", 1, 1, ""), PoolTarget("prefill", "b", 1, 3, "")), timestamp_s=0.0)


def test_only_sites_with_every_stage_live_are_candidates_with_their_draw():
    view = build_view(SNAPSHOT, None, sites=SITES, classes=["interactive"], required_stages=REQUIRED)
    assert set(view.power) == {"a", "b"}  # c has no decode replica
    assert view.power["a"].drawn_w == 200.0 and view.power["a"].available_w == 500.0
    assert view.power["b"].overdrawn and not view.power["b"].powered  # 150 W available, 200 W drawn
    assert view.power["b"].latency_ms == 5.0
    assert view.shares["interactive"] == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_shares_follow_the_routing_plan_and_fall_back_to_the_stage_plan():
    routing = RoutingPlan(shares={"interactive": {"a": 0.25, "b": 0.75}, "batch": {"a": 0.0, "b": 0.0}},
                          modes={}, planned_power_w={}, reasons={}, goodput_rps=0.0, timestamp_s=0.0)
    view = build_view(SNAPSHOT, PLAN, sites=SITES, classes=["interactive", "batch", "new"], required_stages=REQUIRED, routing=routing)
    assert view.shares["interactive"] == {"a": 0.25, "b": 0.75}
    # No servable share for batch, and a class the planner has not seen: the stage plan's sizes.
    assert view.shares["batch"] == {"a": 1.0, "b": 3.0}
    assert view.shares["new"] == {"a": 1.0, "b": 3.0}


def test_each_site_s_wait_is_its_queue_over_its_measured_throughput():
    from dataclasses import replace

    busy = replace(hb("prefill", "a"), queued_prefill_tokens=3000, tokens_per_s=500.0, busy_fraction=0.5)  # 1,000 tokens/s busy
    cold = replace(hb("prefill", "b"), queued_prefill_tokens=3000)  # not measured yet: the 2,000 tokens/s default
    full = replace(hb("decode", "b"), free_kv_blocks=1, total_kv_blocks=20)
    snapshot = TelemetrySnapshot(heartbeats=(busy, hb("decode", "a"), cold, full))
    view = build_view(snapshot, None, sites=SITES, classes=["interactive"], required_stages=REQUIRED)
    assert view.load["a"].wait_s == 3.0 and view.load["b"].wait_s == 1.5
    assert view.load["b"].kv_occupancy == 0.95 and view.load["b"].score == 2.5


# -- lost sites (recorded by the reconcile loop) ------------------------------------------------------
def test_a_site_whose_every_node_left_is_lost_and_says_so():
    nodes = {"a": SiteNodes(live=1, gone=0), "b": SiteNodes(live=0, gone=1)}
    lost = lost_sites(nodes, [hb("prefill", "b")])
    assert set(lost) == {"b"}
    assert lost["b"].startswith("site b lost: no live node carries site.b (1 that did left the cluster)")
    assert "1 heartbeats of its replicas have yet to expire" in lost["b"]
    assert "no heartbeats from its replicas" in lost_sites(nodes, [])["b"]


def test_a_site_with_a_node_left_or_never_placed_on_a_node_is_not_lost():
    nodes = {"a": SiteNodes(live=1, gone=3), "local": SiteNodes(live=0, gone=0)}
    assert lost_sites(nodes, []) == {}


def test_a_lost_site_is_recorded_once_for_each_pool_and_again_when_it_is_back():
    lost = {"b": "site b lost: no live node carries site.b"}
    first = site_loss_decisions({}, lost, ["prefill", "decode"], {"prefill@b": 1}, now_s=5.0)
    assert [(d.kind, d.target, d.before, d.after, d.reason) for d in first] == [
        ("hold", "prefill@b", 1, 0, lost["b"]), ("hold", "decode@b", 0, 0, lost["b"])]
    assert site_loss_decisions(lost, lost, ["prefill", "decode"], {}, now_s=10.0) == []
    back = site_loss_decisions(lost, {}, ["prefill"], {"prefill@b": 1}, now_s=15.0)
    assert [(d.target, d.before, d.after) for d in back] == [("prefill@b", 1, 1)] and "site b back" in back[0].reason
