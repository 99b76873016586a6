"""A replica that takes its decode-only steps as runs gives, request for request, the token
times the step-by-step loop gives, and the controller sees the same heartbeats: scenarios run
both ways (runs cut by arrivals, heartbeats, scaling, preemption and power cuts) and compared."""

from __future__ import annotations

import pytest
from test_cluster import COST, NET, wind_csv

from cluster.spec import ClusterSpec

from simulator.cluster import SimCluster, SimOptions
from simulator.cost_model import GpuCostModel, Network
from simulator.scale import fleet_spec
from simulator.scenario import check_no_leaks
from simulator.workload import assign_classes, azure_trace, poisson_arrivals, rescale_rate, synthetic


def make_spec(topology="colocated", sites=None, engine=None, **pool) -> ClusterSpec:
    pool = {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1, **pool}
    pools = {"colocated": pool} if topology == "colocated" else {"prefill": pool, "decode": pool}
    return ClusterSpec.parse({"topology": topology, "pools": pools, "sites": sites or [{"name": "local"}],
                              "engine": {"chunk_size": 256, "num_kv_blocks": 512, **(engine or {})}})


def outcome(sim: SimCluster, trace) -> tuple:
    requests = sim.run(trace)
    per_request = [(r.request_id, r.outcome, r.first_token_s, r.finish_s, r.tokens, tuple(r.gaps), tuple(r.stages))
                   for r in requests]
    rounds = [(r.plan, r.decisions, r.replica_modes) for r in sim.rounds]
    busy = {r.replica_id: (r.total.busy_s, r.total.iterations, r.total.tokens) for r in sim.all_replicas()}
    assert not check_no_leaks(sim)
    return per_request, rounds, busy, sim.samples


def both_ways(make, trace):
    stepwise = outcome(make(False), trace)
    runs = outcome(make(True), trace)
    assert runs == stepwise


@pytest.mark.parametrize("policy", ["sarathi", "prefill_first"])
def test_autoscaled_bursts_with_preemption(policy):
    s = make_spec(engine={"policy": policy, "num_kv_blocks": 60, "block_size": 8}, max_replicas=4)
    options = lambda runs: SimOptions(cold_start_s=2.0, control_interval_s=1.0, qos_admission=False, decode_runs=runs,  # noqa: E731
                                      autoscaler_overrides={"cooldown_s": 3.0, "request_window_s": 5.0})
    burst = poisson_arrivals(30.0, 10.0, seed=3)
    lull = 10.0 + poisson_arrivals(1.0, 20.0, seed=4)
    trace = synthetic(list(burst) + list(lull), (120, 40), seed=3)
    both_ways(lambda runs: SimCluster(s, COST, NET, options(runs)), trace)


def test_disaggregated_hand_offs():
    trace = synthetic(poisson_arrivals(8.0, 20.0, seed=5), (200, 30), seed=5)
    both_ways(lambda runs: SimCluster(make_spec("disaggregated", max_replicas=2, initial_replicas=2), COST, NET, SimOptions(autoscale=False, decode_runs=runs)), trace)


def test_power_cuts_and_mode_changes(tmp_path):
    power = lambda col: {"kind": "trace", "path": str(wind_csv(tmp_path)), "column": col, "scale_w": 1000, "speed": 3600}  # noqa: E731
    modes = [{"name": "full", "power_w": 400}, {"name": "eco", "power_w": 250, "throughput_fraction": 0.6}]
    sites = [{"name": n, "power": power(col), "max_replicas": 3, "power_modes": modes} for n, col in (("a", "wp1"), ("b", "wp2"))]
    s = make_spec(sites=sites, max_replicas=3)
    trace = synthetic(poisson_arrivals(6.0, 60.0, seed=6), (150, 60), seed=6)
    both_ways(lambda runs: SimCluster(s, COST, NET, SimOptions(cold_start_s=5.0, ride_through_s=0.0, decode_runs=runs)), trace)


def test_the_scale_fleet_on_gpu_profiles():
    cost = GpuCostModel.from_profiles("a100", "llama2-7b")
    trace = assign_classes(rescale_rate(azure_trace("code", limit=600), 4.0), {"interactive": 1.0}, 0)
    both_ways(lambda runs: SimCluster(fleet_spec(16), cost, Network.from_profile("a100"),
                                      SimOptions(max_model_len=8192 * 16, tokens_per_image=576, decode_runs=runs)), trace)
