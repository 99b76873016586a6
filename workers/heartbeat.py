"""A replica's heartbeat into Redis: its load every second, with a time-to-live, so the
autoscaler and the dashboard see each pool as it is and a dead replica disappears by itself.

Publishing never touches the request path: it reads the engine's counters and queues a record
that a background task writes; when Redis is away the record is dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster.records import ReplicaHeartbeat
from cluster.telemetry import TelemetryPublisher, TelemetryStore

log = logging.getLogger(__name__)

# A replica draws about this share of its mode's power when idle (a stated estimate; a meter
# replaces it where one exists).
IDLE_POWER_SHARE = 0.4


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """What a replica needs to publish: where Redis is, and its power when busy."""

    redis_url: str
    prefix: str
    replica_power_w: float = 300.0
    period_s: float = 1.0


def estimated_power_w(busy_fraction: float, replica_power_w: float) -> float:
    return replica_power_w * (IDLE_POWER_SHARE + (1 - IDLE_POWER_SHARE) * busy_fraction)


class Heartbeat:
    def __init__(self, settings: TelemetrySettings, *, pool: str, stage: str, site: str, replica_id: str,
                 stats: Callable[[], dict[str, Any]]) -> None:
        self.settings = settings
        self.identity = dict(pool=pool, stage=stage, site=site, replica_id=replica_id)
        self.stats = stats
        self.store = TelemetryStore(settings.redis_url, settings.prefix, heartbeat_ttl_s=max(5.0, 5 * settings.period_s))
        self.publisher = TelemetryPublisher(self.store, flush_interval_s=settings.period_s / 2)
        self._task: asyncio.Task | None = None

    def record(self) -> ReplicaHeartbeat:
        s = self.stats()
        return ReplicaHeartbeat(
            **self.identity,
            queued_requests=int(s.get("waiting", 0)),
            running_requests=int(s.get("running", 0)),
            queued_prefill_tokens=int(s.get("queued_prefill_tokens", 0)),
            free_kv_blocks=int(s.get("free_kv_blocks", 0)),
            total_kv_blocks=int(s.get("total_kv_blocks", 0)),
            tokens_per_s=float(s.get("tokens_per_s", 0.0)),
            busy_fraction=float(s.get("busy_fraction", 0.0)),
            power_w=estimated_power_w(float(s.get("busy_fraction", 0.0)), self.settings.replica_power_w),
            timestamp_s=time.time(),
        )

    def start(self) -> None:
        if self._task is None:
            self.publisher.start()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="heartbeat")

    async def _loop(self) -> None:
        while True:
            try:
                self.publisher.publish(self.record())
            except Exception:  # a heartbeat must never take the replica down
                log.exception("heartbeat: could not build the record")
            await asyncio.sleep(self.settings.period_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.publisher.stop(flush=True)
        await self.store.close()
