"""Stages and the control round: images through the vision pool, or encoded inside a monolithic
replica's iterations (stalling its decodes); the round's routing plan and fit under power."""

from __future__ import annotations

import pytest

from cluster.spec import ClusterSpec
from simulator.cluster import SimCluster, SimOptions
from simulator.cost_model import LinearCostModel, Network
from simulator.scenario import check_no_leaks
from simulator.workload import TraceRequest, poisson_arrivals, synthetic

COST = LinearCostModel(intercept=0.01, per_prefill_token=0.001, per_decode_token=0.002, per_attended=0.0,
                       encode_s_per_image=0.05, kv_bytes_per_token=0.0)
NET = Network(0.0, 1e12, 1e12)
ONE = {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}


def test_images_go_through_the_vision_pool_first():
    spec = ClusterSpec.parse({"topology": "disaggregated", "pools": {"vision": ONE, "prefill": ONE, "decode": ONE}})
    sim = SimCluster(spec, COST, NET, SimOptions(autoscale=False, tokens_per_image=10))
    (req,) = sim.run([TraceRequest("a", 0.0, 100, 2, num_images=2)])
    assert req.stages == ["vision", "prefill", "decode"]
    # encode 2 x 0.05, then prefill of 100 text + 20 image tokens
    assert req.ttft_s == pytest.approx(0.1 + 0.01 + 0.12)
    assert not check_no_leaks(sim)


def test_monolithic_replica_encodes_inside_its_iterations_and_stalls_decodes():
    spec = ClusterSpec.parse({"topology": "colocated", "pools": {"colocated": ONE}})
    sim = SimCluster(spec, COST, NET, SimOptions(autoscale=False, tokens_per_image=10))
    text, image = sim.run([TraceRequest("t", 0.0, 10, 6), TraceRequest("i", 0.03, 10, 2, num_images=4)])
    assert image.stages == ["colocated", "vision"]
    # the text request's decode that follows the image's arrival waits for 4 x 0.05 s of encoding
    assert max(text.gaps) == pytest.approx(0.2 + 0.01 + 0.002 + 0.05, abs=1e-9)
    assert not check_no_leaks(sim)


def test_the_control_round_sends_work_where_the_power_is_and_darkens_a_site_without(tmp_path):
    csv = tmp_path / "wind.csv"
    csv.write_text("date,wp1,wp2\n" + "".join(f"20100101{h:02d},0.9,0.0\n" for h in range(24)))
    power = lambda col: {"kind": "trace", "path": str(csv), "column": col, "scale_w": 4000, "speed": 60}  # noqa: E731
    modes = [{"name": "full", "power_w": 400}]
    spec = ClusterSpec.parse({
        "topology": "colocated",
        "pools": {"colocated": {"min_replicas": 0, "max_replicas": 8, "initial_replicas": 1}},
        "sites": [{"name": "windy", "power": power("wp1"), "power_modes": modes, "max_replicas": 8},
                  {"name": "calm", "power": power("wp2"), "power_modes": modes, "max_replicas": 8}],
    })
    sim = SimCluster(spec, COST, NET, SimOptions(cold_start_s=1.0, control_interval_s=1.0))
    trace = synthetic(poisson_arrivals(20.0, 30.0, seed=0), (50, 10), seed=0)
    requests = sim.run(trace)
    first = sim.rounds[0]
    assert first.replanned == "no plan yet"
    assert first.routing.shares["interactive"] == {"windy": 1.0, "calm": 0.0}
    assert first.plan.target("colocated@calm").desired == 0  # no power: the site goes dark
    assert "power cap" in first.plan.target("colocated@calm").reason
    assert all(r.site == "windy" for r in requests)
    assert all(r.outcome == "ok" for r in requests)
    assert any(d["kind"] == "scale_up" and d["target"] == "colocated@windy" for d in sim.decisions)


@pytest.mark.parametrize("budget", [0, None])
def test_a_monolithic_replica_bounds_the_images_it_encodes_per_iteration(budget):
    """Three image requests at once: the first starts encoding alone; the other two wait. With
    no bound both encode in the next iteration (vLLM V0); with V1's bound, max(token budget,
    one image) = 256 tokens here, one request's 24 images (240 tokens) per iteration, so the
    third is encoded an iteration after the second."""
    spec = ClusterSpec.parse({"topology": "colocated", "pools": {"colocated": ONE},
                              "engine": {"chunk_size": 256}})
    sim = SimCluster(spec, COST, NET, SimOptions(autoscale=False, tokens_per_image=10, encoder_budget_tokens=budget))
    trace = [TraceRequest(name, 0.0, 10, 2, num_images=24) for name in "abc"]
    _, second, third = sim.run(trace)
    if budget == 0:
        assert third.first_token_s - second.first_token_s < 24 * 0.05  # encoded together; only a prefill chunk apart
    else:
        assert third.first_token_s - second.first_token_s >= 24 * 0.05  # its images came an iteration later
    assert not check_no_leaks(sim)
