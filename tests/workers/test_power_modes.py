"""Power modes enacted by replicas, against the real Redis: the routing plan round-trips through
the store, each replica's heartbeat takes the mode at its rank among its site's live replicas
and reports that mode's power, and the engine's step loop runs at the mode's throughput."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import pytest

from cluster.records import ReplicaHeartbeat, RoutingPlan
from cluster.telemetry import TelemetryStore
from workers.heartbeat import Heartbeat, TelemetrySettings, estimated_power_w

pytestmark = pytest.mark.redis

REDIS_URL = "redis://127.0.0.1:6379"
MODES = (("full", 300.0, 1.0), ("capped", 150.0, 0.5))


def routing(modes: dict[str, dict[str, int]]) -> RoutingPlan:
    return RoutingPlan(
        shares={"interactive": {"a": 1.0}}, modes=modes, planned_power_w={"a": 450.0},
        reasons={"a": "test"}, goodput_rps=1.0, timestamp_s=time.time(),
    )


@pytest.fixture
async def store():
    s = TelemetryStore(REDIS_URL, f"test:{uuid.uuid4().hex}:")
    yield s
    await s.clear()
    await s.close()


def heartbeat(store: TelemetryStore, replica_id: str, seen: list) -> Heartbeat:
    settings = TelemetrySettings(redis_url=REDIS_URL, prefix=store.prefix, power_modes=MODES)
    return Heartbeat(settings, pool="decode", stage="decode", site="a", replica_id=replica_id,
                     stats=lambda: {"busy_fraction": 1.0}, on_mode=seen.append)


async def test_routing_plan_round_trips_and_live_keys_are_per_site(store):
    assert await store.read_routing() is None
    plan = routing({"a": {"full": 1, "capped": 1}})
    await store.write_batch([plan])
    assert await store.read_routing() == plan
    hb = ReplicaHeartbeat(pool="prefill", stage="prefill", site="a", replica_id="r1", queued_requests=0, running_requests=0,
                          queued_prefill_tokens=0, free_kv_blocks=1, total_kv_blocks=1, tokens_per_s=0.0, busy_fraction=0.0,
                          power_w=0.0, timestamp_s=time.time())
    await store.write_batch([hb, replace(hb, site="ab")])  # "a*" must not match site "ab"
    assert await store.live_heartbeat_keys("a") == [store.heartbeat_key(hb)]


async def test_replicas_take_the_planned_modes_by_rank_and_report_their_power(store):
    seen_1, seen_2 = [], []
    first, second = heartbeat(store, "r1", seen_1), heartbeat(store, "r2", seen_2)
    try:
        # Without a plan nothing changes: the replica runs and reports as full.
        assert await first.follow_mode() is None
        assert first.record().power_w == estimated_power_w(1.0, 300.0)
        await store.write_batch([first.record(), second.record(), routing({"a": {"full": 1, "capped": 1}})])
        assert (await first.follow_mode()).name == "full"
        assert (await second.follow_mode()).name == "capped"
        assert [m.name for m in seen_2] == ["capped"]
        assert second.record().power_mode == "capped"
        assert second.record().power_w == pytest.approx(150.0)  # busy: the capped mode's whole draw
        # Less power: both capped; the full replica is told once.
        await store.write_batch([routing({"a": {"full": 0, "capped": 2}})])
        assert (await first.follow_mode()).name == "capped"
        assert [m.name for m in seen_1] == ["full", "capped"]
    finally:
        await first.store.close()
        await second.store.close()


async def test_a_capped_engine_runs_at_its_throughput_fraction(tiny_llama_dir):
    from workers.engine.async_engine import AsyncEngine
    from workers.engine.config import EngineConfig
    from workers.engine.llm_engine import LLMEngine
    from workers.engine.sampling import SamplingParams

    async def decode_time(fraction: float) -> float:
        engine = AsyncEngine(LLMEngine(str(tiny_llama_dir), EngineConfig(num_threads=1)))
        engine.set_throughput_fraction(fraction)
        params = SamplingParams(max_tokens=24, ignore_eos=True)
        async for _ in engine.generate("warm", [5, 6, 7], params):
            pass
        started = time.monotonic()
        async for _ in engine.generate("timed", [5, 6, 7, 8], params):
            pass
        elapsed = time.monotonic() - started
        await engine.shutdown()
        return elapsed

    # The fastest of three interleaved runs each: a busy machine slows single runs at random.
    times = {1.0: [], 0.5: []}
    for _ in range(3):
        for fraction in times:
            times[fraction].append(await decode_time(fraction))
    full, half = min(times[1.0]), min(times[0.5])
    assert half > 1.5 * full, times  # about twice as long: each step is followed by as long a pause
    with pytest.raises(ValueError, match="throughput fraction"):
        AsyncEngine.set_throughput_fraction(AsyncEngine.__new__(AsyncEngine), 0.0)
