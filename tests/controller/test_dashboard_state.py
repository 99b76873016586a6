"""The dashboard's state, built from hand-built snapshots, plans and decisions: pools × sites,
power, request rate, latency and SLO attainment per class, decisions by planner, and JSON that
a browser can parse. Also the operator token's answers (403 closed, 401 wrong)."""

from __future__ import annotations

import json

import pytest

from cluster.records import Decision, Plan, PoolTarget, ReplicaHeartbeat, RequestRecord, SitePower, TelemetrySnapshot
from cluster.spec import ClusterSpec
from controller.dashboard.auth import OperatorToken
from controller.dashboard.state import RATE_WINDOW_S, STATS_WINDOW_S, build_state, decision_source
from router.errors import APIError

NOW = 1_800_000_000.0
TOKEN = "operator-token-0123456789"


def spec() -> ClusterSpec:
    return ClusterSpec.parse({
        "pools": {"prefill": {}, "decode": {}},
        "sites": [{"name": "north"}, {"name": "south"}],
        "qos_classes": [
            {"name": "interactive", "slo": {"ttft_s": 0.5, "tbt_s": 0.1}},
            {"name": "batch", "priority": 1, "slo": {"ttft_s": 10.0, "tbt_s": 1.0}},
        ],
        "default_qos_class": "interactive",
    })


def beat(pool: str, site: str, replica: str, *, queued: int = 0, free: int = 100, total: int = 100,
         tokens: float = 0.0, power: float = 300.0, prefill_tokens: int = 0) -> ReplicaHeartbeat:
    return ReplicaHeartbeat(
        pool=pool, stage=pool, site=site, replica_id=replica, queued_requests=queued, running_requests=1,
        queued_prefill_tokens=prefill_tokens, free_kv_blocks=free, total_kv_blocks=total, tokens_per_s=tokens,
        busy_fraction=0.5, power_w=power, timestamp_s=NOW,
    )


def request(qos: str, *, ttft: float | None, tbt_p50: float | None = 0.01, tbt_p99: float | None = 0.02,
            age_s: float = 1.0, outcome: str = "ok", site: str = "north") -> RequestRecord:
    return RequestRecord(
        request_id=f"r{age_s}{qos}{ttft}", qos_class=qos, site=site, pool_path="prefill>decode", ttft_s=ttft,
        tbt_p50_s=tbt_p50, tbt_p99_s=tbt_p99, prompt_tokens=10, output_tokens=5, outcome=outcome, timestamp_s=NOW - age_s,
    )


def linear_percentile(values: list[float], q: float) -> float:
    """The percentile between closest ranks, written out here to check the builder's."""
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def plan() -> Plan:
    return Plan(targets=(
        PoolTarget("prefill", "north", current=2, desired=3, reason="queued prefill tokens over the TTFT target"),
        PoolTarget("decode", "north", current=1, desired=1, reason="hold"),
        PoolTarget("prefill", "south", current=1, desired=0, reason="power cap: 0 W affords 0 replicas at south"),
    ), timestamp_s=NOW - 4.0)


def test_pools_by_site_with_plan_and_live_replicas():
    snapshot = TelemetrySnapshot(heartbeats=(
        beat("prefill", "north", "a", queued=3, prefill_tokens=700, free=60, total=100, tokens=50.0),
        beat("prefill", "north", "b", queued=1, prefill_tokens=100, free=20, total=100, tokens=30.0),
        beat("decode", "north", "c", free=90, total=100, tokens=200.0),
    ), taken_at_s=NOW)
    state = build_state(snapshot, plan(), [], spec(), NOW)
    pools = {p["key"]: p for p in state["pools"]}
    assert list(pools) == ["prefill@north", "decode@north", "prefill@south", "decode@south"]
    north = pools["prefill@north"]
    assert (north["running"], north["desired"]) == (2, 3)
    assert north["queued_requests"] == 4 and north["queued_prefill_tokens"] == 800
    assert north["kv_occupancy"] == pytest.approx((40 + 80) / 200)
    assert north["tokens_per_s"] == pytest.approx(80.0)
    assert north["reason"].startswith("queued prefill tokens")
    assert (pools["prefill@south"]["running"], pools["prefill@south"]["desired"]) == (0, 0)
    assert pools["decode@south"]["desired"] is None and pools["decode@south"]["reason"] is None
    assert pools["decode@south"]["kv_occupancy"] is None
    assert state["plan"] == {"timestamp_s": NOW - 4.0, "age_s": 4.0}


def test_a_pool_seen_only_in_telemetry_is_still_shown():
    snapshot = TelemetrySnapshot(heartbeats=(beat("vision", "north", "v", total=0, free=0),), taken_at_s=NOW)
    pools = {p["key"]: p for p in build_state(snapshot, None, [], spec(), NOW)["pools"]}
    assert pools["vision@north"]["running"] == 1
    assert pools["vision@north"]["kv_occupancy"] is None  # no KV cache, not "0% full"


def test_site_power_available_and_drawn():
    snapshot = TelemetrySnapshot(
        heartbeats=(beat("prefill", "north", "a", power=250.0), beat("decode", "north", "b", power=400.0)),
        site_power={"north": SitePower("north", 1200.0, NOW, "trace")},
        taken_at_s=NOW,
    )
    sites = {s["site"]: s for s in build_state(snapshot, None, [], spec(), NOW)["sites"]}
    assert sites["north"] == {"site": "north", "available_w": 1200.0, "drawn_w": 650.0, "source": "trace", "running": 2}
    assert sites["south"]["available_w"] is None and sites["south"]["drawn_w"] == 0.0


def test_latency_percentiles_and_slo_attainment_per_class():
    ttfts = [0.1 * i for i in range(1, 11)]  # 0.1 .. 1.0 s; the interactive SLO is 0.5 s
    records = [request("interactive", ttft=t, age_s=2.0 + i) for i, t in enumerate(ttfts)]
    records += [request("interactive", ttft=0.2, tbt_p99=0.3, age_s=3.0)]  # TBT over its 0.1 s target
    records += [request("interactive", ttft=None, tbt_p50=None, tbt_p99=None, outcome="error", age_s=4.0)]
    records += [request("batch", ttft=2.0, tbt_p50=0.4, tbt_p99=0.9, age_s=5.0)]
    records += [request("interactive", ttft=0.01, age_s=STATS_WINDOW_S + 5)]  # outside the window
    state = build_state(TelemetrySnapshot(requests=tuple(records), taken_at_s=NOW), None, [], spec(), NOW)
    classes = {c["qos_class"]: c for c in state["classes"]}
    interactive = classes["interactive"]
    assert interactive["requests"] == 12
    assert interactive["within_slo"] == 5  # 0.1 .. 0.5 s with a TBT inside its target
    assert interactive["attainment"] == pytest.approx(5 / 12)
    all_ttfts = ttfts + [0.2]
    assert interactive["ttft_p50_s"] == pytest.approx(linear_percentile(all_ttfts, 50)) == pytest.approx(0.5)
    assert interactive["ttft_p99_s"] == pytest.approx(linear_percentile(all_ttfts, 99)) == pytest.approx(0.99)
    assert interactive["tbt_p99_s"] == pytest.approx(linear_percentile([0.02] * 10 + [0.3], 99))
    assert (interactive["slo_ttft_s"], interactive["slo_tbt_s"]) == (0.5, 0.1)
    assert classes["batch"]["attainment"] == 1.0 and classes["batch"]["tbt_p50_s"] == 0.4
    assert state["requests"]["outcomes"] == {"ok": 12, "error": 1}


def test_request_rate_counts_the_last_seconds_only():
    records = [request("interactive", ttft=0.1, age_s=0.5 + 0.1 * i) for i in range(20)]
    records += [request("batch", ttft=1.0, age_s=0.5 + i) for i in range(5)]
    records += [request("interactive", ttft=0.1, age_s=RATE_WINDOW_S + 1 + i) for i in range(30)]
    state = build_state(TelemetrySnapshot(requests=tuple(records), taken_at_s=NOW), None, [], spec(), NOW)
    assert state["requests"]["rate_per_s"] == pytest.approx(25 / RATE_WINDOW_S)
    rates = {c["qos_class"]: c["rate_per_s"] for c in state["classes"]}
    assert rates == {"interactive": pytest.approx(20 / RATE_WINDOW_S), "batch": pytest.approx(5 / RATE_WINDOW_S)}


def test_decisions_newest_first_and_attributed_to_their_planner():
    decisions = [
        Decision("scale_up", "prefill@north", 2, 3, "queued prefill tokens over the TTFT target", NOW - 30),
        Decision("scale_down", "prefill@south", 1, 0, "power cap: 0 W affords 0 replicas at south (demand asked 1: hold)", NOW - 10),
        Decision("reroute", "interactive@south", 50, 0, "south's power fell below the plan", NOW - 20),
    ]
    state = build_state(TelemetrySnapshot(taken_at_s=NOW), None, decisions, spec(), NOW)
    assert [d["timestamp_s"] for d in state["decisions"]] == [NOW - 10, NOW - 20, NOW - 30]
    assert [d["source"] for d in state["decisions"]] == ["power", "power", "autoscaler"]
    assert [decision_source(d) for d in decisions] == ["autoscaler", "power", "power"]
    assert state["decisions"][0]["reason"].startswith("power cap")


def test_state_is_strict_json_even_without_telemetry():
    """A stale snapshot with no read ever has an infinite age; browsers refuse NaN and Infinity."""
    state = build_state(TelemetrySnapshot(taken_at_s=NOW, stale=True, age_s=float("inf")), None, [], spec(), NOW)
    text = json.dumps(state, allow_nan=False)
    assert json.loads(text)["telemetry"] == {"taken_at_s": NOW, "stale": True, "age_s": None}
    assert all(c["attainment"] is None and c["ttft_p50_s"] is None for c in state["classes"])


def test_operator_token_closed_wrong_and_right():
    with pytest.raises(APIError) as closed:
        OperatorToken(None).check_http(f"Bearer {TOKEN}")
    assert closed.value.status == 403 and "operator_token" in closed.value.message
    token = OperatorToken(TOKEN)
    for header in (None, "", "Bearer ", f"Basic {TOKEN}", "Bearer wrong-token-0123456789", f"Bearer {TOKEN}x"):
        with pytest.raises(APIError) as refused:
            token.check_http(header)
        assert refused.value.status == 401, header
        assert refused.value.body()["error"]["type"] == "authentication_error"
    token.check_http(f"Bearer {TOKEN}")
    token.check_http(f"bearer  {TOKEN} ")


async def test_the_service_answers_before_any_telemetry_read():
    """Refusals, the page and static files need no Redis: a store that points nowhere is never
    called on these paths."""
    from controller.dashboard.service import Dashboard
    from cluster.telemetry import TelemetryStore

    nowhere = TelemetryStore("redis://127.0.0.1:1", "test:never")
    closed = Dashboard(spec(), nowhere)
    response = await closed.state(f"Bearer {TOKEN}")
    assert response.status_code == 403
    assert json.loads(response.body)["error"]["code"] == "operator_token_not_configured"
    assert (await closed.scrape(f"Bearer {TOKEN}")).status_code == 403

    dashboard = Dashboard(spec().model_copy(update={"operator_token": TOKEN}), nowhere)
    assert (await dashboard.route("api/state", "Bearer nope")).status_code == 401
    page = dashboard.page()
    assert page.status_code == 200 and b"dashboard/static/plotly.min.js" in page.body
    plotly = await dashboard.route("static/plotly.min.js", None)
    assert plotly.status_code == 200 and len(plotly.body) > 1_000_000 and b"plotly" in plotly.body[:2000].lower()
    assert (await dashboard.route("static/dashboard.js", None)).media_type.startswith("text/javascript")
    for path in ("static/../service.py", "static/index.html", "static/%2e%2e/auth.py", "api/other", "static/"):
        assert (await dashboard.route(path, f"Bearer {TOKEN}")).status_code == 404, path
    redirect = await dashboard.route("", None)
    assert redirect.status_code == 307 and redirect.headers["location"] == "../dashboard"
    await nowhere.close()


def test_the_power_planners_shares_and_modes_are_shown():
    from cluster.records import RoutingPlan

    routing = RoutingPlan(
        shares={"interactive": {"a": 0.75, "b": 0.25}}, modes={"a": {"full": 2, "capped": 1}, "b": {"full": 0, "capped": 0}},
        planned_power_w={"a": 780.0, "b": 0.0}, reasons={}, goodput_rps=3.0, timestamp_s=NOW - 10.0,
    )
    state = build_state(TelemetrySnapshot(taken_at_s=NOW), None, [], spec(), NOW, routing)
    assert state["routing"]["age_s"] == 10.0
    assert {(s["site"], s["share"]) for s in state["routing"]["shares"]} == {("a", 0.75), ("b", 0.25)}
    assert state["routing"]["modes"][0] == {"site": "a", "modes": {"full": 2, "capped": 1}, "planned_power_w": 780.0}
    assert build_state(TelemetrySnapshot(taken_at_s=NOW), None, [], spec(), NOW)["routing"] is None
    json.dumps(state, allow_nan=False)
