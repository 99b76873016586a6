"""Faults survived, on the real local Ray cluster with real traffic over HTTP and the real Redis.

- A decode replica killed mid-run: every stream in flight completes (those it was serving
  migrate to the other replica: `tests/reliability/test_migration.py` checks that one stream
  exactly), requests sent as it dies are retried on the other replica and succeed, and the
  pool returns to its size.
- The vision pool down (it cannot be placed): text requests are unaffected, image requests
  get 503 with a clear message.
- The controller actor killed: serving goes on, Ray restarts it, and it takes up the plan
  without a burst of scaling actions.
- After each fault and after draining, every replica's KV blocks are all free again.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid

import httpx
import pytest
from PIL import Image

from cluster.spec import ClusterSpec
from cluster.telemetry import TelemetryStore
from tests.conftest import deployed_app

pytestmark = [pytest.mark.ray, pytest.mark.redis, pytest.mark.slow]
APP = "faults-test"
PREFIX = "/faults"
KEY = "faults-key"


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    spec = ClusterSpec.parse({
        "telemetry_prefix": f"test:{uuid.uuid4().hex}",
        "engine": {"num_threads": 1, "num_kv_blocks": 512},
        "pools": {
            "vision": {"min_replicas": 0, "initial_replicas": 1, "max_replicas": 1},
            "prefill": {"initial_replicas": 1, "max_replicas": 1},
            "decode": {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 2},
        },
        "api_keys": [KEY],
        "http_port": ray_cluster.http_port,
        "grpc_port": ray_cluster.grpc_port,
    })
    with deployed_app(spec, APP, PREFIX, ray_cluster) as url:
        yield spec, url


def http(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(120.0), headers={"Authorization": f"Bearer {KEY}"})


async def stream_completion(client: httpx.AsyncClient, model: str, max_tokens: int) -> dict:
    """One streamed completion: chunks with text, the usage chunk's token count, whether it
    ended with [DONE], any error event. (Text chunks can be fewer than tokens: a token that
    ends inside a UTF-8 character is held back until the character is whole.)"""
    body = {"model": model, "prompt": "Keep talking about the weather", "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    seen = {"tokens": 0, "usage_tokens": None, "done": False, "error": None, "status": None}
    async with client.stream("POST", "/completions", json=body) as response:
        seen["status"] = response.status_code
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                seen["done"] = True
                break
            event = json.loads(data)
            if "error" in event:
                seen["error"] = event["error"]["message"]
            elif event.get("usage"):
                seen["usage_tokens"] = event["usage"]["completion_tokens"]
            elif event.get("choices") and event["choices"][0].get("text"):
                seen["tokens"] += 1
    return seen


def replica_actors(deployment: str) -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"] and APP in a["name"]]


def running(deployment: str) -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    return int(app.deployments[deployment].replica_states.get("RUNNING", 0)) if app else 0


async def all_kv_free(spec: ClusterSpec, timeout_s: float = 30.0) -> list:
    """Wait until every LLM replica's heartbeat shows every KV block free; returns them."""
    store = TelemetryStore.from_spec(spec)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            beats = [h for h in (await store.snapshot()).heartbeats if h.total_kv_blocks > 0]
            if beats and all(h.free_kv_blocks == h.total_kv_blocks for h in beats) or time.monotonic() > deadline:
                return beats
            await asyncio.sleep(0.5)
    finally:
        await store.close()


async def test_a_decode_replica_killed_mid_run_loses_no_request_and_no_stream(cluster):
    import ray

    spec, base = cluster
    async with http(base) as client:
        assert (await client.post("/completions", json={"model": spec.model.name, "prompt": "warm", "max_tokens": 2})).status_code == 200
        in_flight = [asyncio.create_task(stream_completion(client, spec.model.name, 64)) for _ in range(6)]
        await asyncio.sleep(2.0)  # streams are decoding on both replicas
        victim = replica_actors("decode-local")[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        # Sent as the replica dies: their decode may be routed to it before Serve notices.
        body = {"model": spec.model.name, "prompt": "Sent during the fault", "max_tokens": 8}
        after = await asyncio.gather(*(client.post("/completions", json=body) for _ in range(8)))
        results = await asyncio.wait_for(asyncio.gather(*in_flight), timeout=180)

    assert [r.status_code for r in after] == [200] * 8, [r.text for r in after if r.status_code != 200]
    for r in results:
        assert r["status"] == 200 and r["done"], r  # every stream ended: no hang
        assert r["error"] is None and r["usage_tokens"] == 64, r  # and completed, migrated or not
    for _ in range(120):  # Serve replaces the dead replica: the pool returns to its size
        if running("decode-local") == 2 and victim not in replica_actors("decode-local"):
            break
        await asyncio.sleep(1.0)
    assert running("decode-local") == 2
    beats = await all_kv_free(spec)
    assert beats and all(h.free_kv_blocks == h.total_kv_blocks for h in beats), [(h.replica_id, h.free_kv_blocks) for h in beats]


async def test_a_killed_controller_comes_back_and_keeps_the_plan_without_a_burst(cluster):
    import ray

    from controller.reconcile import NAMESPACE, RECONCILER_NAME, start_reconciler, stop_reconciler

    spec, base = cluster
    store = TelemetryStore.from_spec(spec)
    actor = start_reconciler(spec, app_name=APP, interval_s=1.0)
    try:
        for _ in range(120):  # the first controller settles the pools: nothing left to change
            plan = ray.get(actor.last_plan.remote())
            if plan and all(t["current"] == t["desired"] for t in plan.values()):
                break
            await asyncio.sleep(1.0)
        assert plan and all(t["current"] == t["desired"] for t in plan.values()), plan
        killed_at = time.time()
        ray.kill(actor, no_restart=False)  # a crash: Ray restarts the actor

        body = {"model": spec.model.name, "prompt": "Serving goes on", "max_tokens": 4}
        async with http(base) as client:
            assert [(await client.post("/completions", json=body)).status_code for _ in range(4)] == [200] * 4

        for _ in range(120):  # the controller is back and planning again
            try:
                restarted = ray.get_actor(RECONCILER_NAME, namespace=NAMESPACE)
                if ray.get(restarted.alive.remote(), timeout=5) and (await store.read_plan()).timestamp_s > killed_at + 2:
                    break
            except (ValueError, ray.exceptions.RayError):
                pass
            await asyncio.sleep(1.0)
        assert (await store.read_plan()).timestamp_s > killed_at + 2
        await asyncio.sleep(3.0)  # a few more rounds
        burst = [d for d in await store.recent_decisions(500) if d.timestamp_s > killed_at and d.kind in ("scale_up", "scale_down")]
        assert burst == [], burst
    finally:
        stop_reconciler()
        await store.close()


def png_data_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_request(model: str) -> dict:
    content = [{"type": "image_url", "image_url": {"url": png_data_url()}}, {"type": "text", "text": "What colour?"}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4}


@pytest.fixture(scope="module")
def vision_down(ray_cluster):
    """An application whose vision pool can never be placed (it asks for more CPUs than the
    cluster has): the pool is down for good, the rest of the application is up. (A pool merely
    scaled to zero does not stay down: Serve starts a replica for the first request it gets.)"""
    spec = ClusterSpec.parse({
        "telemetry_prefix": f"test:{uuid.uuid4().hex}",
        "engine": {"num_threads": 1},
        "pools": {"vision": {"num_cpus": 10_000}, "prefill": {}, "decode": {}},
        "api_keys": [KEY],
        "http_port": ray_cluster.http_port,
        "grpc_port": ray_cluster.grpc_port,
    })
    with deployed_app(spec, APP_NO_VISION, PREFIX_NO_VISION, ray_cluster, blocking=False) as url:
        yield spec, url


APP_NO_VISION = "faults-no-vision"
TEXT_POOLS_UP_S = 300.0
PREFIX_NO_VISION = "/faults-no-vision"


async def test_the_vision_pool_down_fails_only_image_requests_with_503(vision_down):
    spec, base = vision_down
    text = {"model": spec.model.name, "prompt": "Text only", "max_tokens": 4}
    async with http(base) as client:
        # The text pools come up (the vision pool never does): wait for it, however long a busy
        # machine takes, within a generous bound.
        deadline = time.monotonic() + TEXT_POOLS_UP_S
        while True:
            try:
                if (await client.post("/completions", json=text)).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the text pools did not serve within {TEXT_POOLS_UP_S:.0f} s"
            await asyncio.sleep(0.5)
        text_during = asyncio.gather(*(client.post("/completions", json=text) for _ in range(4)))
        refused = await client.post("/chat/completions", json=image_request(spec.model.name))
        assert refused.status_code == 503, refused.text
        assert "vision pool did not answer" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 1
        assert [r.status_code for r in await text_during] == [200] * 4
        assert (await client.post("/completions", json=text)).status_code == 200
    beats = await all_kv_free(spec)
    assert beats and all(h.free_kv_blocks == h.total_kv_blocks for h in beats)
