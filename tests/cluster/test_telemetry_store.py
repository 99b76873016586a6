"""The telemetry store against the real Redis on 127.0.0.1:6379, each test under its own prefix.

Outages are made without touching the shared server: a store pointed at a port where nothing
listens, or a store reaching Redis through a small TCP relay that the test shuts and reopens.
"""

from __future__ import annotations

import asyncio
import math
import socket
import uuid

import pytest
from redis.asyncio import Redis

from cluster.records import Decision, Plan, PoolTarget, ReplicaHeartbeat, RequestRecord, SitePower
from cluster.telemetry import TelemetryPublisher, TelemetryStore, TelemetryUnavailable

pytestmark = pytest.mark.redis

REDIS_URL = "redis://127.0.0.1:6379"


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Relay:
    """A TCP relay to the shared Redis: shutting it looks like Redis going away."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def shut(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def heartbeat(replica: str = "r1", *, pool: str = "prefill", site: str = "site-a", queued: int = 100, t: float = 1_000.0):
    return ReplicaHeartbeat(
        pool=pool, stage=pool, site=site, replica_id=replica, queued_requests=1, running_requests=2,
        queued_prefill_tokens=queued, free_kv_blocks=50, total_kv_blocks=100, tokens_per_s=900.0,
        busy_fraction=0.5, power_w=250.0, timestamp_s=t,
    )


def request(i: int, site: str = "site-a") -> RequestRecord:
    return RequestRecord(
        request_id=f"req-{i}", qos_class="interactive", site=site, pool_path="prefill>decode", ttft_s=0.2,
        tbt_p50_s=0.02, tbt_p99_s=0.05, prompt_tokens=100 + i, output_tokens=10, outcome="ok", timestamp_s=float(i),
    )


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


@pytest.fixture
async def raw(prefix):
    """A plain client to look at keys directly; removes everything under the test's prefix."""
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def make_store(prefix, raw):
    stores: list[TelemetryStore] = []

    def make(url: str = REDIS_URL, **options) -> TelemetryStore:
        options.setdefault("clock", FakeClock())
        stores.append(TelemetryStore(url, prefix, **options))
        return stores[-1]

    yield make
    for store in stores:
        await store.close()


async def test_heartbeat_expires_when_a_replica_stops_writing(make_store, raw, prefix):
    store = make_store(heartbeat_ttl_s=0.5)
    await store.write_batch([heartbeat("r1"), heartbeat("r2")])
    assert 0 < await raw.pttl(f"{prefix}hb:prefill@site-a:r1") <= 500
    assert [h.replica_id for h in (await store.snapshot()).heartbeats] == ["r1", "r2"]
    await asyncio.sleep(0.3)
    await store.write_batch([heartbeat("r2")])  # r2 keeps writing, r1 has stopped
    await asyncio.sleep(0.35)
    assert [h.replica_id for h in (await store.snapshot()).heartbeats] == ["r2"]


async def test_request_stream_is_capped_and_snapshot_keeps_the_newest(make_store, raw, prefix):
    store = make_store(request_stream_maxlen=10, approximate_trim=False, snapshot_max_requests=4)
    await store.write_batch([request(i) for i in range(25)])
    assert await raw.xlen(prefix + "requests") == 10
    assert [r.request_id for r in (await store.snapshot()).requests] == ["req-21", "req-22", "req-23", "req-24"]


async def test_approximate_trim_bounds_the_stream(make_store, raw, prefix):
    store = make_store(request_stream_maxlen=50)  # MAXLEN ~ trims whole nodes of 100 entries
    for start in range(0, 1000, 100):
        await store.write_batch([request(i) for i in range(start, start + 100)])
    assert 50 <= await raw.xlen(prefix + "requests") <= 150


async def test_snapshot_holds_everything_written(make_store, raw, prefix):
    clock = FakeClock(2_000.0)
    store = make_store(clock=clock, decision_stream_maxlen=2, approximate_trim=False)
    plan = Plan(targets=(PoolTarget("prefill", "site-a", 1, 2, "queue"),), timestamp_s=1_999.0)
    decisions = [Decision("scale_up", "prefill@site-a", i, i + 1, f"step {i}", float(i)) for i in range(3)]
    power = [SitePower("site-a", 5_000.0, 1.0, "constant"), SitePower("site-b", 800.0, 1.0, "trace")]
    hbs = [heartbeat("r1"), heartbeat("d1", pool="decode", site="site-b")]
    await store.write_batch([*hbs, request(1), request(2, site="site-b"), *power, *decisions, plan])

    snap = await store.snapshot()
    assert set(snap.heartbeats) == set(hbs)
    assert snap.requests == (request(1), request(2, site="site-b"))
    assert snap.site_power == {"site-a": power[0], "site-b": power[1]}
    assert (snap.taken_at_s, snap.stale, snap.age_s) == (2_000.0, False, 0.0)
    assert await store.read_plan() == plan
    assert await store.recent_decisions() == decisions[1:]  # capped at 2, oldest first
    assert await raw.hlen(prefix + "power") == 2


async def test_unreadable_records_are_skipped_and_counted(make_store, raw, prefix):
    store = make_store()
    await store.write_batch([heartbeat("r1")])
    await raw.set(prefix + "hb:prefill@site-a:r9", '{"schema_version": 99, "record": "heartbeat", "data": {}}')
    snap = await store.snapshot()
    assert [h.replica_id for h in snap.heartbeats] == ["r1"]
    assert store.rejected_records == 1


class CountingStore(TelemetryStore):
    """The real store, noting the size of every batch it writes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    async def write_batch(self, records, *, skip_invalid=False):
        records = list(records)
        self.batches.append(len(records))
        return await super().write_batch(records, skip_invalid=skip_invalid)


async def test_publisher_batches_and_keeps_the_latest_heartbeat(prefix, raw):
    store = CountingStore(REDIS_URL, prefix, clock=FakeClock())
    publisher = TelemetryPublisher(store, batch_size=10, flush_interval_s=60.0)
    for queued in (1, 2, 3):
        publisher.publish(heartbeat("r1", queued=queued))
    for i in range(25):
        publisher.publish(request(i))
    assert publisher.pending == 26 and await raw.xlen(prefix + "requests") == 0  # nothing on the request path

    assert await publisher.flush() == 26
    assert store.batches == [10, 10, 6]
    assert (publisher.published, publisher.dropped, publisher.pending) == (26, 0, 0)
    snap = await store.snapshot()
    assert [h.queued_prefill_tokens for h in snap.heartbeats] == [3]
    assert [r.request_id for r in snap.requests] == [f"req-{i}" for i in range(25)]
    await store.close()


async def test_publisher_task_flushes_on_a_full_batch_and_on_its_timer(make_store, raw, prefix):
    publisher = TelemetryPublisher(make_store(), batch_size=5, flush_interval_s=30.0)
    publisher.start()
    for i in range(5):
        publisher.publish(request(i))
    await _until(lambda: raw.xlen(prefix + "requests"), 5)  # a full batch wakes the task
    await publisher.stop()

    publisher = TelemetryPublisher(make_store(), batch_size=100, flush_interval_s=0.05)
    publisher.start()
    publisher.publish(request(99))
    await _until(lambda: raw.xlen(prefix + "requests"), 6)  # the timer flushes a partial batch
    await publisher.stop()
    assert publisher.published == 1


async def test_publisher_drops_and_counts_when_redis_is_down(make_store):
    clock = FakeClock()
    store = make_store(f"redis://127.0.0.1:{closed_port()}", clock=clock, min_backoff_s=1.0)
    publisher = TelemetryPublisher(store, max_queue=5, batch_size=3)
    for i in range(8):
        publisher.publish(request(i))  # never raises; the queue keeps the newest 5
    assert publisher.dropped == 3

    assert await publisher.flush() == 0  # one batch tried and lost; then the store backs off
    assert (publisher.dropped, publisher.pending, publisher.published) == (6, 2, 0)
    assert not store.available and not store.ready()
    with pytest.raises(TelemetryUnavailable, match="retrying in 1.0 s"):
        await store.write_batch([request(0)])  # inside the backoff: fails fast, no connect

    clock.now += 1.0
    assert await publisher.flush() == 0
    assert publisher.dropped == 8
    assert store._retry_at - clock.now == 2.0  # backoff doubles while Redis stays away
    await publisher.stop()  # stopping during an outage does not raise either


async def test_reader_serves_the_last_snapshot_as_stale_then_recovers(make_store):
    relay = Relay()
    await relay.open()
    clock = FakeClock(5_000.0)
    store = make_store(f"redis://127.0.0.1:{relay.port}", clock=clock, min_backoff_s=0.5)
    try:
        await store.write_batch([heartbeat("r1"), request(1)])
        fresh = await store.snapshot()
        assert not fresh.stale and len(fresh.heartbeats) == 1

        await relay.shut()
        clock.now += 4.0
        stale = await store.snapshot()
        assert stale.stale and stale.age_s == 4.0
        assert (stale.heartbeats, stale.requests, stale.taken_at_s) == (fresh.heartbeats, fresh.requests, 5_000.0)
        publisher = TelemetryPublisher(store)
        publisher.publish(request(2))
        assert await publisher.flush() == 0 and publisher.dropped == 0  # still backing off: kept
        assert not await store.ping()

        await relay.open()  # same port: Redis is back
        clock.now += 0.5  # past the backoff
        publisher.publish(request(3))
        assert await publisher.flush() == 2 and publisher.dropped == 0
        again = await store.snapshot()
        assert not again.stale and again.taken_at_s == 5_004.5
        assert [r.request_id for r in again.requests] == ["req-1", "req-2", "req-3"]
    finally:
        await relay.shut()


async def test_reader_without_any_snapshot_gets_an_empty_stale_one(make_store):
    snap = await make_store(f"redis://127.0.0.1:{closed_port()}").snapshot()
    assert snap.stale and snap.age_s == math.inf and snap.heartbeats == ()


async def _until(read, expected, timeout_s: float = 3.0) -> None:
    async with asyncio.timeout(timeout_s):
        while await read() != expected:
            await asyncio.sleep(0.02)
