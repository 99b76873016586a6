"""The pool replica around a backend, outside Serve: what it reports is what the request
routers and the heartbeat read, whatever the backend; power modes are checked against the
backend's power control before the replica serves."""

from __future__ import annotations

import dataclasses

import pytest

from cluster.records import ReplicaHeartbeat
from router.replica_choice import ReplicaLoad
from workers.backends.contract import BackendStats
from workers.deployments import ColocatedReplica, routing_stats
from workers.engine.sampling import SamplingParams
from workers.heartbeat import Heartbeat, TelemetrySettings
from workers.requests import GenerateRequest

CONFIG = {"chunk_size": 8, "num_kv_blocks": 64, "block_size": 4, "num_threads": 1}


async def replica(model_dir, telemetry=None) -> ColocatedReplica:
    made = ColocatedReplica.__new__(ColocatedReplica)
    await made.__init__(str(model_dir), dict(CONFIG), "colocated", "north", telemetry)
    return made


def stats(**fields) -> BackendStats:
    base = {f.name: 0 for f in dataclasses.fields(BackendStats)}
    base.update(prefix_hashes=frozenset({5, 9}), busy_fraction=0.5, tokens_per_s=12.0, **fields)
    return BackendStats(**base)


def test_routing_stats_hold_every_field_the_router_and_heartbeat_read():
    out = routing_stats(stats(running=2, waiting=1, free_kv_blocks=7, total_kv_blocks=10, queued_prefill_tokens=40), "colocated", "north")
    load = ReplicaLoad.from_stats("r", out)
    assert (load.running, load.waiting, load.free_kv_blocks, load.total_kv_blocks, load.queued_prefill_tokens) == (2, 1, 7, 10, 40)
    assert load.prefix_hashes == {5, 9}
    beat = Heartbeat(TelemetrySettings(redis_url="redis://127.0.0.1:1", prefix="unused:"), pool="colocated", stage="colocated",
                     site="north", replica_id="r", stats=lambda: out).record()
    assert isinstance(beat, ReplicaHeartbeat)
    assert (beat.running_requests, beat.queued_requests, beat.free_kv_blocks, beat.busy_fraction) == (2, 1, 7, 0.5)


async def test_a_replica_serves_through_its_backend_and_reports_its_stats(tiny_llama_dir):
    r = await replica(tiny_llama_dir)
    try:
        chunks = [c async for c in r.generate(GenerateRequest("a", [1, 5, 9, 14], SamplingParams(max_tokens=5, ignore_eos=True)))]
        assert sum(len(c.token_ids) for c in chunks) == 5 and chunks[-1].finish_reason == "length"
        out = r.record_routing_stats()
        assert out["pool"] == "colocated" and out["site"] == "north" and out["total_kv_blocks"] == 64
        assert out["tokens_per_s"] > 0
        await r.check_health()
    finally:
        await r.__del__()


async def test_power_modes_the_backend_cannot_enact_refuse_the_replica(tiny_llama_dir):
    telemetry = {"redis_url": "redis://127.0.0.1:6379", "prefix": "unused:", "power_modes": [("full", 300.0, 1.0), ("off", 0.0, 0.0)]}
    with pytest.raises(ValueError, match="power mode off"):
        await replica(tiny_llama_dir, telemetry)
