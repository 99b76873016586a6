"""Two sites on one node whose power comes from a meter (readings written to Redis): a power
drop at one site moves new work to the other at once, its replicas shrink to fit, no request
is lost or left hanging; power returning brings its capacity and its traffic back."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from cluster.records import SitePower
from cluster.spec import ClusterSpec
from cluster.telemetry import TelemetryStore
from controller.reconcile import Reconciler, running_replicas
from tests.conftest import deployed_app

pytestmark = [pytest.mark.ray, pytest.mark.redis, pytest.mark.slow]
APP = "power-test"
PREFIX = "/power"


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    site = {"power": {"kind": "redis"}, "power_modes": [{"name": "full", "power_w": 300.0}], "max_replicas": 4}
    spec = ClusterSpec.parse({
        "telemetry_prefix": f"test:{uuid.uuid4().hex}",
        "engine": {"num_threads": 1},
        "pools": {"prefill": {"max_replicas": 2}, "decode": {"max_replicas": 2}},
        "sites": [{"name": "a", **site}, {"name": "b", "latency_ms": 5.0, **site}],
        "http_port": ray_cluster.http_port,
        "grpc_port": ray_cluster.grpc_port,
    })
    with deployed_app(spec, APP, PREFIX, ray_cluster) as url:
        yield spec, url


async def meter(store: TelemetryStore, **watts: float) -> None:
    await store.write_batch([SitePower(site=s, available_w=w, timestamp_s=time.time(), source="meter") for s, w in watts.items()])


async def traffic(client: httpx.AsyncClient, model: str, n: int, concurrency: int = 4) -> list[int]:
    body = {"model": model, "prompt": "Power follows the wind", "max_tokens": 3}
    statuses: list[int] = []

    async def worker(k: int) -> None:
        for _ in range(k):
            statuses.append((await client.post("/completions", json=body)).status_code)

    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    return statuses


async def sites_since(store: TelemetryStore, since_s: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in (await store.snapshot()).requests:
        if r.timestamp_s >= since_s and r.outcome == "ok":
            counts[r.site] = counts.get(r.site, 0) + 1
    return counts


async def replicas(spec) -> dict[str, int]:
    return await asyncio.get_running_loop().run_in_executor(None, running_replicas, spec, APP)


async def test_a_power_drop_moves_work_away_and_power_returning_brings_it_back(cluster):
    spec, base = cluster
    reconciler = Reconciler(spec, app_name=APP, autoscaler={"cooldown_s": 2.0})
    store = reconciler.store
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await meter(store, a=2000.0, b=2000.0)
        await reconciler.reconcile_once()
        await traffic(client, spec.model.name, 8)  # starts the ingress's site view
        await asyncio.sleep(1.5)
        start = time.time()
        assert set((await traffic(client, spec.model.name, 40))) == {200}
        await asyncio.sleep(1.0)
        before = await sites_since(store, start)
        assert before.get("a", 0) > 0 and before.get("b", 0) > 0, before
        for _ in range(20):  # replicas take the planned power mode within a few heartbeats
            modes = {h.power_mode for h in (await store.snapshot()).heartbeats}
            if modes == {"full"}:
                break
            await asyncio.sleep(0.5)
        assert modes == {"full"}, modes

        # Site a's wind drops: 100 W cannot run its replicas (300 W each).
        sending = asyncio.create_task(traffic(client, spec.model.name, 60))
        await meter(store, a=100.0, b=2000.0)
        await asyncio.sleep(1.5)  # within one refresh the ingress stops sending to a
        dropped_at = time.time()
        plan = await reconciler.reconcile_once()
        assert plan.target("prefill@a").desired == 0 and "power cap" in plan.target("prefill@a").reason
        assert reconciler.routing.shares["interactive"]["a"] == 0.0  # the planner replanned at once
        reroutes = [d for d in await store.recent_decisions() if d.kind == "reroute" and d.target == "interactive@a"]
        assert reroutes and "power fell to 100 W" in reroutes[-1].reason
        assert set(await sending) == {200}, "a request was lost across the power drop"
        assert set(await traffic(client, spec.model.name, 20)) == {200}
        await asyncio.sleep(1.0)
        after = await sites_since(store, dropped_at)
        assert after.get("a", 0) == 0 and after.get("b", 0) > 0, after
        for _ in range(60):
            if (await replicas(spec))["prefill@a"] == 0:
                break
            await asyncio.sleep(0.5)
        assert (await replicas(spec))["prefill@a"] == 0 and (await replicas(spec))["decode@a"] == 0

        # The wind returns: capacity comes back at a, and so does traffic.
        await meter(store, a=2000.0, b=2000.0)
        for _ in range(60):
            await reconciler.reconcile_once()
            current = await replicas(spec)
            if current["prefill@a"] >= 1 and current["decode@a"] >= 1:
                break
            await asyncio.sleep(0.5)
        assert current["prefill@a"] >= 1 and current["decode@a"] >= 1, reconciler.last_plan
        await asyncio.sleep(2.0)  # heartbeats from a's new replicas reach the ingress's view
        returned_at = time.time()
        assert set(await traffic(client, spec.model.name, 40)) == {200}
        await asyncio.sleep(1.0)
        assert (await sites_since(store, returned_at)).get("a", 0) > 0


async def test_a_loaded_site_gets_little_new_work_until_its_queue_drains(cluster):
    """The ingress blends the plan with live load: with both sites powered and planned, a long
    prefill queue reported at site a (a heartbeat written beside a's real replicas, as a busy
    replica would publish it) sends new requests to b; once the queue is gone, a takes work again."""
    from cluster.records import ReplicaHeartbeat

    spec, base = cluster
    reconciler = Reconciler(spec, app_name=APP, autoscaler={"cooldown_s": 2.0})
    store = TelemetryStore(spec.redis_url, spec.telemetry_prefix, heartbeat_ttl_s=2.0)
    await meter(store, a=2000.0, b=2000.0)
    for _ in range(60):  # both sites serving (an earlier test may have darkened a)
        await reconciler.reconcile_once()
        current = await replicas(spec)
        if min(current.values()) >= 1:
            break
        await asyncio.sleep(0.5)
    assert min(current.values()) >= 1, current
    assert reconciler.routing.shares["interactive"]["a"] > 0

    def queued_at_a() -> ReplicaHeartbeat:
        return ReplicaHeartbeat(pool="prefill", stage="prefill", site="a", replica_id="backlog", queued_requests=400,
                                running_requests=8, queued_prefill_tokens=400_000, free_kv_blocks=10, total_kv_blocks=64,
                                tokens_per_s=2000.0, busy_fraction=1.0, power_w=300.0, timestamp_s=time.time())

    async def keep_reporting(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await store.write_batch([queued_at_a()])
            await asyncio.sleep(0.5)

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        stop = asyncio.Event()
        reporter = asyncio.create_task(keep_reporting(stop))
        await asyncio.sleep(1.5)  # the ingress's site view refreshes every half second
        loaded_at = time.time()
        assert set(await traffic(client, spec.model.name, 40)) == {200}
        stop.set()
        await reporter
        await asyncio.sleep(1.0)
        during = await sites_since(store, loaded_at)
        assert during.get("b", 0) >= 38 and during.get("a", 0) <= 2, during

        await asyncio.sleep(3.0)  # the backlog's heartbeat expires: a's queue is gone
        drained_at = time.time()
        assert set(await traffic(client, spec.model.name, 40)) == {200}
        await asyncio.sleep(1.0)
        assert (await sites_since(store, drained_at)).get("a", 0) > 0
    await store.close()
