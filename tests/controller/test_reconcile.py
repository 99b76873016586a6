"""The reconcile loop on a real local Ray cluster and the real Redis: a pool under load is
scaled by Ray Serve following Pavana's plan; the same observation twice plans no change."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from cluster.records import ReplicaHeartbeat
from cluster.spec import ClusterSpec
from cluster.telemetry import TelemetryStore
from controller.reconcile import Reconciler, running_replicas

pytestmark = [pytest.mark.ray, pytest.mark.redis]


APP = "reconcile-test"


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    from ray import serve

    import controller.app as app

    prefix = f"test:{uuid.uuid4().hex}"
    spec = ClusterSpec.parse({
        "telemetry_prefix": prefix,
        "engine": {"num_threads": 1, "num_kv_blocks": 64},
        "pools": {"prefill": {"max_replicas": 2}, "decode": {"max_replicas": 2}},
    })
    pools = {"local": {stage: app._pool_deployment(stage, pool, spec.sites[0], spec, use_site_resources=True)
                       for stage, pool in spec.pools.items()}}

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Holder:  # binds the pools into one application; the router is tested elsewhere
        def __init__(self, pools):
            self.pools = pools

    serve.run(Holder.bind(pools), name=APP, route_prefix=None)
    yield spec
    asyncio.run(TelemetryStore(spec.redis_url, prefix).clear())
    serve.delete(APP)


def load(spec: ClusterSpec, queued_prefill_tokens: int) -> ReplicaHeartbeat:
    """A heartbeat of a prefill replica with a long queue (what a busy replica would publish)."""
    return ReplicaHeartbeat(
        pool="prefill", stage="prefill", site="local", replica_id="busy", queued_requests=50, running_requests=8,
        queued_prefill_tokens=queued_prefill_tokens, free_kv_blocks=10, total_kv_blocks=64, tokens_per_s=500.0,
        busy_fraction=1.0, power_w=300.0, timestamp_s=time.time(),
    )


def test_a_loaded_pool_is_scaled_up_through_serve(cluster):
    spec = cluster
    reconciler = Reconciler(spec, app_name=APP)

    async def scenario():
        await reconciler.store.write_batch([load(spec, 50_000)])
        plan = await reconciler.reconcile_once()
        target = plan.target("prefill@local")
        assert (target.current, target.desired) == (1, 2), target.reason
        assert "TTFT" in target.reason
        decisions = [d for d in await reconciler.store.recent_decisions() if d.kind.startswith("scale")]
        assert [(d.target, d.before, d.after) for d in decisions] == [("prefill@local", 1, 2)]
        for _ in range(60):
            if running_replicas(spec, APP)["prefill@local"] == 2:
                return
            await asyncio.sleep(1)
        raise AssertionError(f"Serve did not follow the plan: {running_replicas(spec, APP)}")

    asyncio.run(scenario())


def test_the_same_observation_twice_changes_nothing(cluster):
    spec = cluster
    reconciler = Reconciler(spec, app_name=APP)

    async def scenario():
        from dataclasses import replace

        now = time.time()
        observation = await reconciler.observe(now)
        first = reconciler.plan(observation)
        applied = replace(observation, current={t.key: t.desired for t in first.plan.targets})
        reconciler.memory = first.memory
        second = reconciler.plan(applied)
        assert second.plan.changes() == ()
        assert [d for d in second.decisions if d.kind.startswith("scale")] == []

    asyncio.run(scenario())


MODES = [{"name": "full", "power_w": 300.0}, {"name": "capped", "power_w": 180.0, "throughput_fraction": 0.7}]


def test_rounds_recorded_live_replay_through_the_simulator_with_the_same_results(cluster, tmp_path):
    """The simulator's controller, fed the observations a live reconcile loop recorded, decides
    exactly what the live loop decided: targets, routing plans, modes, decisions, memory."""
    from autoscaler.round import settings_from_spec
    from autoscaler.round_log import read_rounds
    from cluster.records import RequestRecord, SitePower
    from simulator.control import replay

    data = cluster.model_dump(mode="json")
    data["sites"] = [{"name": "local", "power": {"kind": "redis"}, "power_modes": MODES, "max_replicas": 4}]
    spec = ClusterSpec.parse(data)
    overrides = {"autoscaler": {"cooldown_s": 0.0}, "planner": {"interval_s": 600.0}}
    log = tmp_path / "rounds.jsonl"
    reconciler = Reconciler(spec, app_name=APP, record_path=log, **overrides)

    async def scenario():
        store = reconciler.store
        now = time.time()
        traffic = [RequestRecord(f"r{i}", "interactive", "local", "prefill>decode", 0.3, 0.02, 0.05, 300, 100, "ok", now - i * 0.2)
                   for i in range(40)]
        await store.write_batch([SitePower("local", 1200.0, now, "meter"), *traffic])
        await reconciler.reconcile_once(now)  # the first plan
        await store.write_batch([load(spec, 80_000)])
        await reconciler.reconcile_once(now + 1)  # prefill grows
        await store.write_batch([SitePower("local", 400.0, now + 2, "meter")])
        await reconciler.reconcile_once(now + 2)  # power falls: replan, capped modes, fit under 400 W

    asyncio.run(scenario())
    recorded = list(read_rounds(log))
    assert len(recorded) == 3
    assert "max_replicas" in recorded[1].result.plan.target("prefill@local").reason  # the load asks for more than 2
    capped = [d for d in recorded[2].result.decisions if d.kind == "scale_down"]
    assert capped and all("power cap: 400 W affords 2 replicas" in d.reason for d in capped)
    assert [d.kind for d in recorded[2].result.decisions if d.kind == "power_mode"] == ["power_mode"]
    # The first round starts from what the earlier tests' loops left in Redis (a plan for the
    # default site's unbounded power), which the recorded memory carries into the replay.
    assert recorded[0].memory.routing is not None and recorded[0].result.replanned is not None
    assert "power fell to 400 W" in recorded[2].result.replanned
    assert recorded[2].result.routing.modes["local"] == {"full": 0, "capped": 2}

    replayed = replay(settings_from_spec(spec, **overrides), [r.observation for r in recorded], recorded[0].memory)
    for live, sim in zip(recorded, replayed):
        assert sim == live.result
    assert replayed[-1] == reconciler.last_result  # and the live loop's own objects, not only their JSON
