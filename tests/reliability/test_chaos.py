"""Chaos with nothing lost, on the real local Ray cluster: a short seeded schedule kills a
replica of every pool (vision, prefill, decode), kills the reconcile actor and restarts Redis
while greedy streams of fixed prompts run over HTTP; every request must end with 200 and a
stream equal to the prompt's undisturbed answer, and every live replica's KV blocks must be
free once the traffic has drained. The run is `benchmarks/chaos_run.py`'s, the same as
`pavana bench chaos`; Redis is a private server of the test's own, never the shared one.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from benchmarks.chaos_faults import PrivateRedis
from benchmarks.chaos_run import ChaosTarget, WholeBounds, run_chaos
from benchmarks.chaos_schedule import REDIS_RESTART, RECONCILER_KILL, fault_kinds, fault_schedule
from benchmarks.chaos_traffic import completion_prompt, http_client, image_prompt, references
from cluster.spec import ClusterSpec
from tests.conftest import deployed_app

pytestmark = [pytest.mark.ray, pytest.mark.slow]
APP = "chaos-test"
PREFIX = "/chaos"
KEY = "chaos-key"
SEED = 19
MAX_TOKENS = 48
RATE_RPS = 3.0
WINDOW_S = 50.0


def fixed(size: int) -> dict:
    return {"min_replicas": size, "initial_replicas": size, "max_replicas": size}


@pytest.fixture(scope="module")
def private_redis():
    server = PrivateRedis.start_new()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def chaos_app(ray_cluster, private_redis):
    from controller.reconcile import start_reconciler, stop_reconciler

    spec = ClusterSpec.parse({
        "telemetry_prefix": f"test:{uuid.uuid4().hex}",
        "redis_url": private_redis.url,
        "engine": {"num_threads": 1, "num_kv_blocks": 256},
        "pools": {"vision": fixed(1), "prefill": fixed(2), "decode": fixed(2)},
        "api_keys": [KEY],
        "http_port": ray_cluster.http_port,
        "grpc_port": ray_cluster.grpc_port,
    })
    with deployed_app(spec, APP, PREFIX, ray_cluster) as url:
        start_reconciler(spec, app_name=APP, interval_s=1.0)
        try:
            yield ChaosTarget(APP, spec, url, KEY, private_redis)
        finally:
            stop_reconciler()


def prompts(model: str) -> list:
    from bench.prompts import png_data_url

    texts = [completion_prompt(i, model, f"Chaos prompt {i}: tell a long story about the number {i * 7}", MAX_TOKENS) for i in range(6)]
    return [*texts, image_prompt(6, model, "Describe this picture at length", png_data_url(SEED, 32), MAX_TOKENS)]


def test_faults_of_every_kind_lose_no_request_no_stream_and_no_kv_block(chaos_app):
    kinds = fault_kinds(list(chaos_app.spec.pools))
    schedule = fault_schedule(SEED, kinds, len(kinds), WINDOW_S, lead_s=3.0, tail_s=3.0)
    assert {f.kind for f in schedule} >= {"kill:decode", RECONCILER_KILL, REDIS_RESTART}

    async def run() -> dict:
        async with http_client(chaos_app.url, KEY) as client:
            known = await references(client, prompts(chaos_app.spec.model.name))
        return await run_chaos(chaos_app, known, rate_rps=RATE_RPS, schedule=schedule, seed=SEED, tail_s=5.0,
                               bounds=WholeBounds(replica_s=90.0, reconciler_s=45.0, redis_s=45.0), kv_drain_s=30.0)

    result = asyncio.run(run())
    assert result["faults_injected"] == len(kinds) and result["faults_not_whole"] == 0, result["faults"]
    assert result["requests"] >= RATE_RPS * WINDOW_S / 2, result["requests"]
    assert (result["failed"], result["broken_streams"]) == (0, 0), result["bad_requests"]
    assert result["kv_blocks"] and result["kv_blocks_leaked"] == 0, result["kv_blocks"]
    # Every replica kill landed on a replica of its pool, and each fault met the traffic.
    assert all(f["requests_touched"] > 0 for f in result["faults"]), result["faults"]
