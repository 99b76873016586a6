"""The Redis telemetry store and the batching publisher (issue 5).

Layout under a configurable prefix `P` (so tests and clusters never collide):

    P hb:<pool>@<site>:<replica>   string, JSON heartbeat, with a TTL: a silent replica vanishes
    P requests                     stream, capped (XADD MAXLEN ~), field "json"
    P decisions                    stream, capped, field "json"
    P power                        hash, site -> JSON SitePower
    P plan                         string, JSON Plan
    P routing                      string, JSON RoutingPlan (the power planner's shares and modes)
    P engine-metrics:<pool>@<site>:<replica>  string, JSON EngineMetrics (an engine's own
                                   Prometheus metrics, e.g. vLLM's), with the heartbeat's TTL

`pavana up` scopes every record to its run: it serves under `P run:<run id>:` and points
`P current-run` (JSON {run_id, started_s}) at that run, so `pavana status` and the dashboard
never show heartbeats, requests or decisions of clusters long gone; earlier runs' keys are left
to expire (`EARLIER_RUNS_TTL_S`).

A Redis outage must never fail a request (DESIGN.md, Telemetry): writers drop and count,
readers serve the last good snapshot marked stale, and both retry after a backoff that grows
while Redis stays away, so a dead server costs one failed connect per backoff, not one per call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cluster.records import (
    Decision,
    EngineMetrics,
    Plan,
    RecordError,
    RoutingPlan,
    ReplicaHeartbeat,
    RequestRecord,
    SitePower,
    TelemetrySnapshot,
    WireRecord,
    from_json,
    pool_key,
    to_json,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, TimeoutError)
_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "\\*?[]"})


EARLIER_RUNS_TTL_S = 24 * 3600  # an earlier run's records stay readable this long after a new run starts


def run_prefix(base: str, run_id: str) -> str:
    """The key prefix of one run of a cluster whose spec names `base`."""
    return f"{base.removesuffix(':')}:run:{run_id}"


class TelemetryUnavailable(ConnectionError):
    """Redis cannot be reached now; the store retries after its backoff."""


class TelemetryStore:
    """Reads and writes telemetry records; every method is one or a few pipelined round trips."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379",
        prefix: str = "pavana",
        *,
        heartbeat_ttl_s: float = 15.0,
        request_stream_maxlen: int = 10_000,
        decision_stream_maxlen: int = 1_000,
        approximate_trim: bool = True,
        snapshot_max_requests: int = 2_000,
        timeout_s: float = 1.0,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if heartbeat_ttl_s <= 0:
            raise ValueError(f"heartbeat_ttl_s must be > 0, got {heartbeat_ttl_s}")
        if not 0 < min_backoff_s <= max_backoff_s:
            raise ValueError(f"need 0 < min_backoff_s <= max_backoff_s, got {min_backoff_s}, {max_backoff_s}")
        self.prefix = prefix if prefix.endswith(":") else prefix + ":"
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.request_stream_maxlen = request_stream_maxlen
        self.decision_stream_maxlen = decision_stream_maxlen
        self.approximate_trim = approximate_trim
        self.snapshot_max_requests = snapshot_max_requests
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.clock = clock
        self.rejected_records = 0  # records in Redis this code refused to read (other schema version)
        # Retries are ours (backoff below); redis-py's own would stall every call during an outage.
        self._client = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        where = self._client.connection_pool.connection_kwargs
        self.address = f"{where.get('host', where.get('path', '?'))}:{where.get('port', '')}"  # no password in logs
        self._backoff_s = 0.0
        self._retry_at = -math.inf
        self._last_snapshot: TelemetrySnapshot | None = None

    @classmethod
    def from_spec(cls, spec: Any, **options: Any) -> TelemetryStore:
        """A store for a `ClusterSpec` (its `redis_url` and `telemetry_prefix`)."""
        return cls(spec.redis_url, spec.telemetry_prefix, **options)

    # -- keys -----------------------------------------------------------------------------------
    def heartbeat_key(self, hb: ReplicaHeartbeat) -> str:
        return self.replica_key(hb.pool, hb.site, hb.replica_id)

    def engine_metrics_key(self, record: EngineMetrics) -> str:
        return f"{self.prefix}engine-metrics:{pool_key(record.pool, record.site)}:{record.replica_id}"

    def replica_key(self, pool: str, site: str, replica_id: str) -> str:
        """Where a replica's heartbeat lives."""
        return f"{self.prefix}hb:{pool_key(pool, site)}:{replica_id}"

    @property
    def requests_key(self) -> str:
        return self.prefix + "requests"

    @property
    def decisions_key(self) -> str:
        return self.prefix + "decisions"

    @property
    def power_key(self) -> str:
        return self.prefix + "power"

    @property
    def plan_key(self) -> str:
        return self.prefix + "plan"

    @property
    def routing_key(self) -> str:
        return self.prefix + "routing"

    # -- availability ---------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """False from a failed call until the next successful one."""
        return self._backoff_s == 0.0

    def ready(self) -> bool:
        """Whether a call now would reach the network (not inside a backoff window)."""
        return self.clock() >= self._retry_at

    async def _run(self, call: Callable[[Redis], Awaitable[T]]) -> T:
        if not self.ready():
            wait_s = self._retry_at - self.clock()
            raise TelemetryUnavailable(f"Redis at {self.address} unreachable; retrying in {wait_s:.1f} s")
        try:
            result = await call(self._client)
        except _REDIS_DOWN as exc:
            if self.available:
                log.warning("telemetry: Redis unreachable", extra={"address": self.address, "error": repr(exc)})
            self._backoff_s = min(self.max_backoff_s, max(self.min_backoff_s, 2 * self._backoff_s))
            self._retry_at = self.clock() + self._backoff_s
            raise TelemetryUnavailable(f"Redis at {self.address} unreachable: {exc}") from exc
        if not self.available:
            log.info("telemetry: Redis reachable again", extra={"address": self.address})
        self._backoff_s, self._retry_at = 0.0, -math.inf
        return result

    async def ping(self) -> bool:
        try:
            return bool(await self._run(lambda c: c.ping()))
        except TelemetryUnavailable:
            return False

    async def close(self) -> None:
        await self._client.aclose()

    # -- writers --------------------------------------------------------------------------------
    async def write_batch(self, records: Iterable[WireRecord], *, skip_invalid: bool = False) -> int:
        """Write records of any kind in one pipeline; returns how many were skipped as invalid.

        Raises RecordError (before any I/O) for an invalid record unless `skip_invalid`, and
        TelemetryUnavailable when Redis cannot be reached.
        """
        commands: list[Callable[[Any], Any]] = []
        skipped = 0
        for record in records:
            try:
                commands.append(self._command(record, to_json(record)))
            except RecordError:
                if not skip_invalid:
                    raise
                log.warning("telemetry: invalid record skipped", exc_info=True)
                skipped += 1
        if commands:

            async def execute(client: Redis) -> None:
                async with client.pipeline(transaction=False) as pipe:
                    for command in commands:
                        command(pipe)
                    await pipe.execute()

            await self._run(execute)
        return skipped

    def _command(self, record: WireRecord, payload: str) -> Callable[[Any], Any]:
        trim = self.approximate_trim
        match record:
            case ReplicaHeartbeat():
                key, ttl_ms = self.heartbeat_key(record), max(1, int(self.heartbeat_ttl_s * 1000))
                return lambda p: p.set(key, payload, px=ttl_ms)
            case EngineMetrics():
                key, ttl_ms = self.engine_metrics_key(record), max(1, int(self.heartbeat_ttl_s * 1000))
                return lambda p: p.set(key, payload, px=ttl_ms)
            case RequestRecord():
                n = self.request_stream_maxlen
                return lambda p: p.xadd(self.requests_key, {"json": payload}, maxlen=n, approximate=trim)
            case Decision():
                n = self.decision_stream_maxlen
                return lambda p: p.xadd(self.decisions_key, {"json": payload}, maxlen=n, approximate=trim)
            case SitePower():
                return lambda p: p.hset(self.power_key, record.site, payload)
            case Plan():
                return lambda p: p.set(self.plan_key, payload)
            case RoutingPlan():
                return lambda p: p.set(self.routing_key, payload)
        raise RecordError(f"{type(record).__name__} is not a telemetry record")

    async def set_plan(self, plan: Plan) -> None:
        await self.write_batch([plan])

    # -- readers --------------------------------------------------------------------------------
    async def snapshot(self) -> TelemetrySnapshot:
        """The current telemetry; never raises for an outage: the last good read, marked stale."""
        try:
            snap = await self._run(self._read_snapshot)
        except TelemetryUnavailable:
            now = self.clock()
            if self._last_snapshot is None:
                return TelemetrySnapshot(taken_at_s=now, stale=True, age_s=math.inf)
            return replace(self._last_snapshot, stale=True, age_s=now - self._last_snapshot.taken_at_s)
        self._last_snapshot = snap
        return snap

    async def _read_snapshot(self, client: Redis) -> TelemetrySnapshot:
        pattern = self.prefix.translate(_GLOB_SPECIAL) + "hb:*"
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        async with client.pipeline(transaction=False) as pipe:
            pipe.xrevrange(self.requests_key, count=self.snapshot_max_requests)
            pipe.hgetall(self.power_key)
            if keys:
                pipe.mget(keys)  # a key may expire between SCAN and MGET: it reads as None
            request_entries, power, *rest = await pipe.execute()
        heartbeats = self._decode(p for p in (rest[0] if rest else ()) if p is not None)
        requests = self._decode(fields["json"] for _, fields in reversed(request_entries))
        site_power = self._decode(power.values())
        return TelemetrySnapshot(
            heartbeats=tuple(sorted(heartbeats, key=lambda h: (h.pool, h.site, h.replica_id))),
            requests=tuple(requests),
            site_power={p.site: p for p in site_power},
            taken_at_s=self.clock(),
        )

    async def read_plan(self) -> Plan | None:
        payload = await self._run(lambda c: c.get(self.plan_key))
        return None if payload is None else from_json(payload, Plan)

    async def live_heartbeat_keys(self, site: str) -> list[str]:
        """Keys of the live heartbeats of every pool at `site` (a silent replica's has expired)."""
        pattern = self.prefix.translate(_GLOB_SPECIAL) + "hb:*@" + site.translate(_GLOB_SPECIAL) + ":*"

        async def scan(client: Redis) -> list[str]:
            return sorted([key async for key in client.scan_iter(match=pattern, count=1000)])

        return await self._run(scan)

    async def engine_metrics(self) -> list[EngineMetrics]:
        """The engine metrics of every live replica that exports any (a silent one's expire)."""
        pattern = self.prefix.translate(_GLOB_SPECIAL) + "engine-metrics:*"

        async def read(client: Redis) -> list[str]:
            keys = sorted([key async for key in client.scan_iter(match=pattern, count=1000)])
            return [p for p in (await client.mget(keys) if keys else []) if p is not None]

        return self._decode(await self._run(read))

    async def read_routing(self) -> RoutingPlan | None:
        payload = await self._run(lambda c: c.get(self.routing_key))
        return None if payload is None else from_json(payload, RoutingPlan)

    async def recent_decisions(self, count: int = 50) -> list[Decision]:
        """The last `count` decisions, oldest first."""
        entries = await self._run(lambda c: c.xrevrange(self.decisions_key, count=count))
        return self._decode(fields["json"] for _, fields in reversed(entries))

    def _decode(self, payloads: Iterable[str]) -> list[Any]:
        """Skip, count and log records this code cannot read (another schema version, damage):
        one replica of a newer Pavana must not blind the controller to all the others."""
        records = []
        for payload in payloads:
            try:
                records.append(from_json(payload))
            except RecordError as exc:
                self.rejected_records += 1
                log.warning("telemetry: unreadable record skipped", extra={"error": str(exc)})
        return records

    # -- runs -----------------------------------------------------------------------------------
    @property
    def current_run_key(self) -> str:
        return self.prefix + "current-run"

    async def start_run(self, run_id: str, started_s: float) -> int:
        """Point this (base) prefix at a new run, and let the keys of earlier runs expire in
        `EARLIER_RUNS_TTL_S`; returns how many keys were set to expire."""

        async def start(client: Redis) -> int:
            pattern = self.prefix.translate(_GLOB_SPECIAL) + "run:*"
            mine = run_prefix(self.prefix, run_id) + ":"
            earlier = [key async for key in client.scan_iter(match=pattern, count=1000) if not key.startswith(mine)]
            async with client.pipeline(transaction=False) as pipe:
                pipe.set(self.current_run_key, json.dumps({"run_id": run_id, "started_s": started_s}))
                for key in earlier:
                    pipe.expire(key, EARLIER_RUNS_TTL_S)
                await pipe.execute()
            return len(earlier)

        return await self._run(start)

    async def current_run(self) -> tuple[str, float] | None:
        """The run this (base) prefix points at, as (run id, start time), or None."""

        async def read(client: Redis) -> tuple[str, float] | None:
            raw = await client.get(self.current_run_key)
            if raw is None:
                return None
            try:
                value = json.loads(raw)
                return str(value["run_id"]), float(value["started_s"])
            except (ValueError, KeyError, TypeError):
                log.warning("telemetry: unreadable run pointer at %s", self.current_run_key)
                return None

        return await self._run(read)

    async def clear(self) -> int:
        """Delete every key under this store's prefix (tests, `pavana down`); returns the count."""

        async def delete(client: Redis) -> int:
            pattern = self.prefix.translate(_GLOB_SPECIAL) + "*"
            keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
            return await client.delete(*keys) if keys else 0

        return await self._run(delete)


class TelemetryPublisher:
    """Takes records on the request path in O(1) and writes them in batches from a task.

    State records (heartbeats, site power, the plan) keep only their latest value per
    identity, so a burst of heartbeats never crowds out request records. Events (request
    records, decisions) wait in a bounded queue; when it is full the oldest is dropped and
    counted, because the newest telemetry is the useful one after an outage. While the store
    backs off after a failure the queue is not drained; a batch whose write fails is dropped.
    Call `publish` from the event loop's thread.
    """

    def __init__(
        self, store: TelemetryStore, *, max_queue: int = 10_000, batch_size: int = 512, flush_interval_s: float = 0.5
    ) -> None:
        if max_queue < 1 or batch_size < 1 or flush_interval_s <= 0:
            raise ValueError("max_queue and batch_size must be >= 1 and flush_interval_s > 0")
        self.store = store
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.published = 0  # records written to Redis
        self.dropped = 0  # records lost: queue overflow or a failed write
        self.invalid = 0  # records that could not be serialised (NaN, wrong type)
        self._events: deque[WireRecord] = deque()
        self._latest: dict[tuple, WireRecord] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False

    @property
    def pending(self) -> int:
        return len(self._events) + len(self._latest)

    def publish(self, record: WireRecord) -> None:
        """Queue a record; never blocks, never raises for Redis (a wrong type is a bug: it raises)."""
        match record:
            case ReplicaHeartbeat():
                self._latest[("hb", record.pool, record.site, record.replica_id)] = record
            case EngineMetrics():
                self._latest[("engine-metrics", record.pool, record.site, record.replica_id)] = record
            case SitePower():
                self._latest[("power", record.site)] = record
            case Plan():
                self._latest[("plan",)] = record
            case RoutingPlan():
                self._latest[("routing",)] = record
            case RequestRecord() | Decision():
                if len(self._events) >= self.max_queue:
                    self._events.popleft()
                    self.dropped += 1
                self._events.append(record)
                if len(self._events) >= self.batch_size:
                    self._wake.set()
            case _:
                raise TypeError(f"{type(record).__name__} is not a telemetry record")

    def start(self) -> None:
        """Start the flush task on the running loop."""
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="telemetry-publisher")

    async def stop(self, *, flush: bool = True) -> None:
        """Let the task finish its current batch (not cancel it mid-write, which would lose the
        batch uncounted), then write what is left unless `flush` is False."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            await self._task
            self._task = None
        if flush:
            await self.flush()

    async def flush(self) -> int:
        """Write everything pending now, one pipeline per batch; returns how many were written."""
        written = 0
        while self.pending and self.store.ready():
            batch = [self._latest.pop(key) for key in list(self._latest)[: self.batch_size]]
            while self._events and len(batch) < self.batch_size:
                batch.append(self._events.popleft())
            try:
                invalid = await self.store.write_batch(batch, skip_invalid=True)
            except TelemetryUnavailable:
                self.dropped += len(batch)
                break
            except Exception:  # a bug or a Redis error other than an outage: never kill the loop
                log.exception("telemetry: batch write failed", extra={"records": len(batch)})
                self.dropped += len(batch)
                break
            self.invalid += invalid
            self.published += len(batch) - invalid
            written += len(batch) - invalid
        return written

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                async with asyncio.timeout(self.flush_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if not self._stopping:
                await self.flush()
