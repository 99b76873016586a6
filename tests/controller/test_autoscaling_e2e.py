"""Autoscaling end to end on a real local Ray cluster with real traffic over HTTP: each pool
grows on its own signal, idle pools shrink after the cool-down and never below their minimum,
and a Redis outage costs no request and no scaling action on stale data.

The application runs beside the other tests' (its own route prefix); the reconcile loop runs
in this process with a short interval and cool-down; Redis is a private `redis-server` on a
free port, so the test can stop and restart it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cluster.spec import ClusterSpec
from controller.reconcile import Reconciler, running_replicas

pytestmark = [pytest.mark.ray, pytest.mark.redis, pytest.mark.slow]
APP = "autoscale-test"
PREFIX = "/autoscale"
AUTOSCALER = {"cooldown_s": 3.0, "request_window_s": 5.0, "max_snapshot_age_s": 5.0}
GROWTH_BOUND_S = 180.0  # generous: a busy CI machine serves the load slowly, not wrongly


class PrivateRedis:
    """A redis-server of the test's own, which it may stop and start again on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is installed by `make test`"
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        for _ in range(50):
            try:
                if redis.Redis(port=self.port, socket_timeout=0.2).ping():
                    return
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


def heavy_vision_model(path: Path) -> Path:
    """The default model's language half with a vision tower some 50× the default's compute
    (hidden 512, 12 layers, still 16 tokens per image): encoding then costs more than
    prefilling an image's tokens, so image traffic loads the vision pool first, as a real
    CLIP tower beside a small language model does. With the default tower (under a
    millisecond per image) image traffic is prefill-bound and the vision pool rightly holds."""
    from workers.engine.default_model import DEFAULT_SEED, DEFAULT_SHAPE, write_tiny_llava

    vision = dict(image_size=56, patch_size=14, hidden_size=512, intermediate_size=2048, num_layers=12, num_heads=8)
    return write_tiny_llava(path, seed=DEFAULT_SEED, vision=vision, **DEFAULT_SHAPE)


@pytest.fixture(scope="module")
def cluster(ray_cluster, tmp_path_factory):
    from ray import serve

    from controller.app import build_app
    from tests.conftest import free_port

    redis = PrivateRedis(free_port())
    redis.start()
    model = heavy_vision_model(tmp_path_factory.mktemp("heavy-vision"))
    spec = ClusterSpec.parse({
        "model": {"path": str(model)},
        "redis_url": redis.url,
        "telemetry_prefix": f"test:{uuid.uuid4().hex}",
        "engine": {"num_threads": 1, "chunk_size": 512},
        "pools": {name: {"min_replicas": 1, "max_replicas": 2, "initial_replicas": 1} for name in ("vision", "prefill", "decode")},
        "qos_classes": [{"name": "interactive", "slo": {"ttft_s": 0.25, "tbt_s": 0.5}}],
        "http_port": ray_cluster.http_port,
        "grpc_port": ray_cluster.grpc_port,
    })
    serve.run(build_app(spec), name=APP, route_prefix=PREFIX)
    try:
        yield spec, redis, f"http://127.0.0.1:{ray_cluster.http_port}{PREFIX}/v1"
    finally:
        serve.delete(APP)
        redis.stop()


def image_url(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def send(client: httpx.AsyncClient, bodies: list[tuple[str, dict]], concurrency: int = 16) -> list[int]:
    statuses: list[int] = []
    queue = list(bodies)

    async def worker() -> None:
        while queue:
            path, body = queue.pop()
            statuses.append((await client.post(path, json=body)).status_code)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


class Load:
    """Requests sent at a fixed concurrency until stopped: load lasts as long as the condition
    it should bring about takes on this machine, however busy, not a fixed count."""

    def __init__(self, client: httpx.AsyncClient, make_body, concurrency: int = 16) -> None:
        self.client = client
        self.make_body = make_body  # i -> (path, body)
        self.statuses: list[int] = []
        self._stop = asyncio.Event()
        self._count = 0
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(concurrency)]

    async def _worker(self) -> None:
        while not self._stop.is_set():
            path, body = self.make_body(self._count)
            self._count += 1
            self.statuses.append((await self.client.post(path, json=body)).status_code)

    async def stop(self) -> list[int]:
        """Stop sending; the requests in flight finish. Returns every status."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.statuses


async def until(condition, timeout_s: float, reconciler: Reconciler) -> dict[str, int]:
    """Reconcile every half second until `condition(running replicas)` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        await reconciler.reconcile_once()
        current = await asyncio.get_running_loop().run_in_executor(None, running_replicas, reconciler.spec, APP)
        if condition(current) or time.monotonic() > deadline:
            return current
        await asyncio.sleep(0.5)


async def test_each_pool_grows_on_its_own_signal_and_shrinks_when_idle(cluster):
    spec, _, base = cluster
    reconciler = Reconciler(spec, app_name=APP, autoscaler=AUTOSCALER)
    long_prompt = " ".join(["wind"] * 900)
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        # Long prompts (one output token each: the decode pool has nothing to do), sent until
        # the prefill pool has grown or the bound has passed.
        load = Load(client, lambda i: ("/completions", {"model": spec.model.name, "prompt": f"{i} {long_prompt}", "max_tokens": 1}))
        current = await until(lambda c: c["prefill@local"] == 2, GROWTH_BOUND_S, reconciler)
        statuses = await load.stop()
        assert statuses and all(s == 200 for s in statuses)
        assert current["prefill@local"] == 2, reconciler.last_plan
        assert current["decode@local"] == 1 and current["vision@local"] == 1
        # Image traffic grows the vision pool alone: the images queued at it are its demand.
        # Four distinct images a request (the vision replicas cache repeated ones).
        load = Load(client, lambda i: ("/chat/completions", {"model": spec.model.name, "max_tokens": 1, "messages": [{"role": "user", "content": [
            *({"type": "image_url", "image_url": {"url": image_url(4 * i + k)}} for k in range(4)),
            {"type": "text", "text": "what is this"}]}]}))
        current = await until(lambda c: c["vision@local"] == 2, GROWTH_BOUND_S, reconciler)
        statuses = await load.stop()
        assert statuses and all(s == 200 for s in statuses)
        assert current["vision@local"] == 2, reconciler.last_plan.target("vision@local").reason
        assert current["decode@local"] == 1
        # Idle: every pool back to its minimum after the cool-down, never below it.
        current = await until(lambda c: all(n == 1 for n in c.values()), GROWTH_BOUND_S, reconciler)
        assert current == {"vision@local": 1, "prefill@local": 1, "decode@local": 1}, reconciler.last_plan
        assert all(t.desired >= 1 for t in reconciler.last_plan.targets)


async def test_a_redis_outage_costs_no_request_and_no_scaling_action(cluster):
    spec, redis, base = cluster
    reconciler = Reconciler(spec, app_name=APP, autoscaler=AUTOSCALER)
    body = {"model": spec.model.name, "prompt": "Hello there", "max_tokens": 4}
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        assert (await client.post("/completions", json=body)).status_code == 200
        before = await reconciler.reconcile_once()
        redis.stop()
        try:
            statuses = await send(client, [("/completions", body)] * 24, concurrency=8)
            assert statuses == [200] * 24  # every request served without telemetry
            plan = await reconciler.reconcile_once()
            assert plan.changes() == ()  # no action on stale data
            assert all("stale" in t.reason for t in plan.targets), [t.reason for t in plan.targets]
        finally:
            redis.start()
        # Telemetry resumes: fresh heartbeats and new request records reach the restarted server.
        deadline = time.monotonic() + 40
        while True:
            await client.post("/completions", json=body)
            snapshot = await reconciler.store.snapshot()
            if not snapshot.stale and snapshot.heartbeats and snapshot.requests:
                break
            assert time.monotonic() < deadline, "telemetry did not resume after Redis came back"
            await asyncio.sleep(1)
    assert before.targets  # the loop planned before the outage too
