"""A replica's heartbeat into Redis: its load every second, with a time-to-live, so the
autoscaler and the dashboard see each pool as it is and a dead replica disappears by itself.

Publishing never touches the request path: it reads the engine's counters and queues a record
that a background task writes; when Redis is away the record is dropped and counted.

Every few beats it also publishes the engine's own Prometheus metrics (`engine_metrics`, e.g.
vLLM's `vllm:*`), which the ingress's `/metrics` serves beside Pavana's.

The same loop enacts the power planner's modes: every few beats it reads the routing plan and
the live replicas of its site, takes the mode at its rank (`cluster.power_modes.
mode_for_replica`), tells the engine (`on_mode`), and reports its power in that mode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster.power_modes import Mode, mode_for_replica
from cluster.records import EngineMetrics, ReplicaHeartbeat, rank_id
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
    replica_power_w: float = 300.0  # the full mode's, until a routing plan assigns one
    period_s: float = 1.0
    # The site's power modes as (name, power_w, throughput_fraction); empty: modes are not enacted.
    power_modes: tuple[tuple[str, float, float], ...] = ()
    mode_check_every: int = 3  # beats between reads of the routing plan
    engine_metrics_every: int = 5  # beats between publications of the engine's own metrics


def estimated_power_w(busy_fraction: float, replica_power_w: float) -> float:
    return replica_power_w * (IDLE_POWER_SHARE + (1 - IDLE_POWER_SHARE) * busy_fraction)


class Heartbeat:
    def __init__(self, settings: TelemetrySettings, *, pool: str, stage: str, site: str, replica_id: str,
                 stats: Callable[[], dict[str, Any]], on_mode: Callable[[Mode], None] | None = None,
                 engine_metrics: Callable[[], str] | None = None) -> None:
        self.settings = settings
        self.modes = tuple(Mode(*m) for m in settings.power_modes)
        self.mode: Mode | None = None
        self.on_mode = on_mode
        self.engine_metrics = engine_metrics
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
            power_w=estimated_power_w(float(s.get("busy_fraction", 0.0)), self.mode.power_w if self.mode else self.settings.replica_power_w),
            timestamp_s=time.time(),
            power_mode=self.mode.name if self.mode else "",
            images_per_s=float(s.get("images_per_s", 0.0)),
            prefill_tokens_per_busy_s=float(s.get("prefill_tokens_per_busy_s", 0.0)),
            decode_tokens_per_busy_s=float(s.get("decode_tokens_per_busy_s", 0.0)),
            queued_images=int(s.get("queued_images", 0)),
        )

    def publish_engine_metrics(self) -> None:
        text = self.engine_metrics() if self.engine_metrics is not None else ""
        if text:
            i = self.identity
            self.publisher.publish(EngineMetrics(pool=i["pool"], site=i["site"], replica_id=i["replica_id"], text=text, timestamp_s=time.time()))

    def start(self) -> None:
        if self._task is None:
            self.publisher.start()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="heartbeat")

    async def _loop(self) -> None:
        beat = 0
        while True:
            try:
                if self.modes and beat % self.settings.mode_check_every == 0:
                    await self.follow_mode()
                self.publisher.publish(self.record())
                if self.engine_metrics is not None and beat % self.settings.engine_metrics_every == 0:
                    self.publish_engine_metrics()
            except Exception:  # a heartbeat must never take the replica down
                log.exception("heartbeat: could not build the record")
            beat += 1
            await asyncio.sleep(self.settings.period_s)

    async def follow_mode(self) -> Mode | None:
        """Take the mode the routing plan gives this replica's rank at its site; without a plan
        or without Redis, keep the current one."""
        try:
            routing = await self.store.read_routing()
            if routing is None or self.identity["site"] not in routing.modes:
                return self.mode
            live = await self.store.live_heartbeat_keys(self.identity["site"])
        except ConnectionError:
            return self.mode
        # Ranked by heartbeat key less the store's prefix: the same names the controller's round
        # (`autoscaler.round`) and the simulator rank by.
        me = rank_id(self.identity["pool"], self.identity["site"], self.identity["replica_id"])
        live_ids = [k.removeprefix(self.store.prefix + "hb:") for k in live]
        mode = mode_for_replica(me, live_ids, self.modes, routing.modes[self.identity["site"]])
        if mode != self.mode:
            log.info("power mode %s -> %s (%.0f W, %.0f%% throughput)", self.mode and self.mode.name, mode.name, mode.power_w, 100 * mode.throughput_fraction)
            self.mode = mode
            if self.on_mode is not None:
                self.on_mode(mode)
        return mode

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.publisher.stop(flush=True)
        await self.store.close()
