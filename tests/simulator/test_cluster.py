"""Whole-cluster scenarios small enough to check by hand: TTFT and TBT of a colocated replica,
the KV hand-off's transfer time, traffic leaving a site whose power drops, and no KV block or
request left behind after autoscaling."""

from __future__ import annotations

import pytest

from cluster.spec import ClusterSpec
from simulator.cluster import SimCluster, SimOptions
from simulator.cost_model import LinearCostModel, Network
from simulator.scenario import check_no_leaks
from simulator.workload import TraceRequest, poisson_arrivals, synthetic

COST = LinearCostModel(intercept=0.01, per_prefill_token=0.001, per_decode_token=0.002, per_attended=0.0,
                       kv_bytes_per_token=1000.0)
NET = Network(within_site_latency_s=0.005, within_site_bytes_per_s=1e6, between_sites_bytes_per_s=1e5)


def spec(topology="colocated", sites=None, **pool):
    pools = ({"colocated": {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1, **pool}} if topology == "colocated"
             else {s: {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1, **pool} for s in ("prefill", "decode")})
    return ClusterSpec.parse({"topology": topology, "pools": pools, "sites": sites or [{"name": "local"}],
                              "engine": {"chunk_size": 256, "num_kv_blocks": 512}})


def test_ttft_and_tbt_computed_by_hand():
    sim = SimCluster(spec(), COST, NET, SimOptions(autoscale=False))
    a, b = sim.run([TraceRequest("a", 0.0, 100, 3), TraceRequest("b", 0.05, 50, 2)])
    # a alone: 0.01 + 100 x 0.001
    assert a.ttft_s == pytest.approx(0.11)
    # b's prompt rides with a's first decode: 0.01 + 50 x 0.001 + 0.002, ending at 0.172
    assert b.ttft_s == pytest.approx(0.172 - 0.05)
    # then both decode together: 0.01 + 2 x 0.002
    assert a.gaps == pytest.approx([0.062, 0.014])
    assert b.gaps == pytest.approx([0.014])
    assert a.outcome == b.outcome == "ok" and a.e2e_s == pytest.approx(0.186)
    assert not check_no_leaks(sim)


def test_kv_handoff_adds_its_transfer_time():
    sim = SimCluster(spec("disaggregated"), COST, NET, SimOptions(autoscale=False))
    (req,) = sim.run([TraceRequest("a", 0.0, 100, 2)])
    transfer = 0.005 + 100 * 1000 / 1e6
    assert req.ttft_s == pytest.approx(0.11)
    assert req.gaps == pytest.approx([transfer + 0.012])
    assert req.stages == ["prefill", "decode"]
    assert not check_no_leaks(sim)


def test_handoff_between_sites_pays_the_wan_and_latency():
    sites = [{"name": "a", "latency_ms": 10}, {"name": "b", "latency_ms": 30}]
    sim = SimCluster(spec("disaggregated", sites), COST, NET, SimOptions(autoscale=False))
    sim.sites["a"].replicas["decode"][0].kill()
    sim.sites["b"].replicas["prefill"][0].kill()
    sim.shares = {"interactive": {"a": 1.0}}
    (req,) = sim.run([TraceRequest("x", 0.0, 100, 2)])
    transfer = 0.005 + 100 * 1000 / 1e5 + 0.020
    assert req.site == "a" and req.gaps == pytest.approx([transfer + 0.012])
    assert req.ttft_s == pytest.approx(0.11 + 0.020)  # the client's round trip to site a


def wind_csv(tmp_path):
    path = tmp_path / "wind.csv"
    rows = ["date,wp1,wp2"] + [f"20100101{h:02d},{1.0 if h < 1 else 0.0},1.0" for h in range(24)]
    path.write_text("\n".join(rows) + "\n")
    return path


def two_wind_sites(tmp_path):
    power = lambda col: {"kind": "trace", "path": str(wind_csv(tmp_path)), "column": col, "scale_w": 1000, "speed": 3600}  # noqa: E731
    modes = [{"name": "full", "power_w": 400}]
    return spec(sites=[{"name": "a", "power": power("wp1"), "power_modes": modes},
                       {"name": "b", "power": power("wp2"), "power_modes": modes}])


@pytest.mark.parametrize("aware", [True, False])
def test_power_drop_moves_traffic(tmp_path, aware):
    """Site a's wind fails between 1 s and 2 s (one trace hour per simulated second)."""
    options = SimOptions(autoscale=False, power_aware=aware, routing="planned" if aware else "least_loaded",
                         power_interval_s=0.1, ride_through_s=1.0)
    sim = SimCluster(two_wind_sites(tmp_path), COST, NET, options)
    trace = synthetic(poisson_arrivals(30.0, 6.0, seed=1), (20, 30), seed=1)
    requests = sim.run(trace)
    before = [r for r in requests if r.arrival_s < 1.0]
    after = [r for r in requests if r.arrival_s > 3.0]
    assert {r.site for r in before} == {"a", "b"}
    assert after and {r.site for r in after} == {"b"}
    assert not sim.sites["a"].alive()  # its replica went dark
    lost = [r for r in requests if r.outcome != "ok"]
    if aware:
        assert not lost  # the router stopped sending to a as soon as it was overdrawn
    else:
        assert lost and all("power cut" in r.reason for r in lost)
    assert not check_no_leaks(sim)


def test_autoscaling_under_bursts_leaves_nothing_behind():
    s = spec(min_replicas=1, max_replicas=4)
    # Admission off: the burst would otherwise fill the ingress's 256 slots, and this test is
    # about the autoscaler leaving nothing behind (admission has its own test).
    options = SimOptions(cold_start_s=2.0, control_interval_s=1.0, qos_admission=False,
                         autoscaler_overrides={"cooldown_s": 3.0, "request_window_s": 5.0})
    sim = SimCluster(s, COST, NET, options)
    burst = poisson_arrivals(40.0, 15.0, seed=3)
    lull = 15.0 + poisson_arrivals(1.0, 30.0, seed=4)
    trace = synthetic(list(burst) + list(lull), (120, 20), seed=3)
    requests = sim.run(trace)
    assert all(r.outcome == "ok" for r in requests)
    assert any(d["to"] > d["from"] for d in sim.decisions)  # it grew
    assert any(d["to"] < d["from"] for d in sim.decisions)  # and shrank once the load was gone
    assert not check_no_leaks(sim)
    assert all(r.tokens == 20 for r in requests)


def test_the_blended_router_steers_a_burst_away_from_the_busier_site():
    """Two sites planned at equal shares, one with a single replica and one with four: blind to
    load the router sends each half; blended, the small site's queue sends work to the big one,
    and the requests wait less."""
    sites = [{"name": "small", "max_replicas": 4}, {"name": "big", "max_replicas": 4}]
    pools = {"colocated": {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1}}
    s = ClusterSpec.parse({"topology": "colocated", "pools": pools, "sites": sites,
                           "engine": {"chunk_size": 256, "num_kv_blocks": 512}})
    trace = synthetic(poisson_arrivals(30.0, 10.0, seed=5), (300, 10), seed=5)
    runs = {}
    for routing in ("planned", "blended"):
        sim = SimCluster(s, COST, NET, SimOptions(autoscale=False, power_aware=False, routing=routing))
        for _ in range(3):
            sim._start_replica("colocated", sim.sites["big"], cold=False)
        runs[routing] = sim.run(trace)
        assert not check_no_leaks(sim)
    share_big = {k: sum(r.site == "big" for r in v) / len(v) for k, v in runs.items()}
    assert share_big["planned"] == pytest.approx(0.5, abs=0.08)
    assert share_big["blended"] > 0.65
    p90 = {k: sorted(r.ttft_s for r in v)[int(0.9 * len(v))] for k, v in runs.items()}
    assert p90["blended"] < p90["planned"]


def test_static_routing_loses_the_share_of_a_site_without_power():
    sites = [{"name": "dark", "power": {"kind": "constant", "power_w": 0.0}},
             {"name": "lit", "power": {"kind": "constant", "power_w": 10_000.0}}]
    sim = SimCluster(spec(sites=sites), COST, NET, SimOptions(autoscale=False, routing="static"))
    requests = sim.run(synthetic(poisson_arrivals(5.0, 20.0, seed=1), (50, 5), seed=1))
    dark = [r for r in requests if r.outcome == "rejected"]
    assert 0.3 < len(dark) / len(requests) < 0.7  # about half: no fail-over to the lit site
    assert all(r.site == "lit" for r in requests if r.outcome == "ok")
