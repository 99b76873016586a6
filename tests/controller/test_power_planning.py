"""The reconciler's power-planning round against the real Redis (no Ray needed): it plans from
the meters' readings and the recent requests, replans at once when a site's power drops,
records why, and a restarted controller takes up the plan it finds instead of re-deciding."""

from __future__ import annotations

import time
import uuid

import pytest

from cluster.records import RequestRecord, SitePower
from cluster.spec import ClusterSpec
from cluster.telemetry import TelemetryStore
from controller.reconcile import Reconciler

pytestmark = pytest.mark.redis


@pytest.fixture
async def spec():
    modes = [{"name": "full", "power_w": 300.0}, {"name": "capped", "power_w": 180.0, "throughput_fraction": 0.7}]
    site = {"power": {"kind": "redis"}, "power_modes": modes, "max_replicas": 4}
    spec = ClusterSpec.parse({
        "telemetry_prefix": f"test:{uuid.uuid4().hex}",
        "sites": [{"name": "a", **site}, {"name": "b", "latency_ms": 5.0, **site}],
    })
    yield spec
    store = TelemetryStore.from_spec(spec)
    await store.clear()
    await store.close()


async def meter(store: TelemetryStore, now: float, **watts: float) -> None:
    await store.write_batch([SitePower(site=s, available_w=w, timestamp_s=now, source="meter") for s, w in watts.items()])


def traffic(now: float, n: int) -> list[RequestRecord]:
    return [
        RequestRecord(request_id=f"r{i}", qos_class="interactive", site="a", pool_path="prefill>decode", ttft_s=0.2,
                      tbt_p50_s=0.02, tbt_p99_s=0.05, prompt_tokens=200, output_tokens=200, outcome="ok", timestamp_s=now - i * 0.1)
        for i in range(n)
    ]


async def round_at(reconciler: Reconciler, store: TelemetryStore, now: float):
    """Plan one round on what Redis holds (no pools running: power planning needs none)."""
    return reconciler.plan(reconciler.observation(await store.snapshot(), {}, now))


async def test_power_drop_replans_at_once_and_a_restarted_controller_keeps_the_plan(spec):
    store = TelemetryStore.from_spec(spec)
    now = time.time()
    await meter(store, now, a=1200.0, b=1200.0)
    await store.write_batch(traffic(now, 60))
    reconciler = Reconciler(spec, planner={"interval_s": 60.0})

    first = await round_at(reconciler, store, now)
    assert first.replanned == "no plan yet"
    assert await store.read_routing() is None  # planning writes nothing; acting does
    assert sum(first.routing.shares["interactive"].values()) == pytest.approx(1.0)
    assert first.routing.modes["a"] == {"full": 4, "capped": 0}
    assert await reconciler.act(reconciler.observation(await store.snapshot(), {}, now), first)
    reconciler.memory = first.memory
    again = await round_at(reconciler, store, now + 5)
    assert again.replanned is None and again.routing == first.routing  # nothing changed, interval not up
    reconciler.memory = again.memory

    # Site a's wind drops: replan now, not at the end of the interval; its traffic moves to b.
    await meter(store, now + 10, a=0.0, b=1200.0)
    observation = reconciler.observation(await store.snapshot(), {}, now + 10)
    dropped = reconciler.plan(observation)
    routing = dropped.routing
    assert "power fell to 0 W" in dropped.replanned
    assert routing.shares["interactive"]["a"] == 0.0 and routing.shares["interactive"]["b"] == 1.0
    reroutes = {d.target: d for d in dropped.decisions if d.kind == "reroute"}
    assert "power fell to 0 W" in reroutes["interactive@a"].reason
    assert reroutes["interactive@b"].after == 100
    assert await reconciler.act(observation, dropped)
    assert (await store.read_routing()).shares == routing.shares
    assert {d.target for d in await store.recent_decisions() if d.kind == "reroute"} >= {"interactive@a", "interactive@b"}

    # A new controller (the actor restarted) reads the plan back and does not re-decide it.
    restarted = Reconciler(spec, planner={"interval_s": 60.0})
    await restarted.restore_memory()
    kept = await round_at(restarted, store, now + 12)
    assert kept.replanned is None
    assert kept.routing.shares == routing.shares
    await store.close()
