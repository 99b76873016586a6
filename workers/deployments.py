"""The Ray Serve deployments of the pools: vision encoder, prefill, decode and colocated.

Each LLM replica owns one engine behind the backend contract (`workers/backends/contract.py`:
Pavana's engine or vLLM's) and serves many requests at once: the engine's stepping loop batches
whatever is in flight. A vision replica owns one encoder. Large payloads — image embeddings and
KV caches — go into Ray's object store here and travel as ObjectRefs, so the router passes
references and never the tensors.

`controller/app.py` turns these classes into one Serve deployment per pool and site.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import ray

from cluster.power_modes import Mode
from workers.backends.contract import BackendStats, Prefilled, make_backend
from workers.engine.bundled import model_dir
from workers.engine.default_model import DEFAULT_MODEL_NAME
from workers.engine.sequence import MultimodalSpan
from workers.heartbeat import Heartbeat, TelemetrySettings
from workers.requests import GenerateRequest, ImageInput, PrefillResult, TokenChunk

log = logging.getLogger(__name__)

# How many prefix hashes a replica advertises for prefix-affinity routing.
MAX_ADVERTISED_PREFIX_HASHES = 4096


class HeldRefs:
    """Keeps the ObjectRefs this replica hands out alive for `ttl_s`.

    A ref returned inside a Serve response is pickled by Serve itself, so Ray's reference
    counting does not see the router as a borrower: once this replica drops its own ref, the
    object can be deleted before the next pool fetches it. Holding each ref for a while —
    long enough for the hand-off to complete — closes that gap.
    """

    def __init__(self, ttl_s: float = 60.0) -> None:
        self.ttl_s = ttl_s
        self._refs: deque[tuple[float, Any]] = deque()

    def hold(self, ref: Any) -> Any:
        now = time.monotonic()
        while self._refs and now - self._refs[0][0] > self.ttl_s:
            self._refs.popleft()
        self._refs.append((now, ref))
        return ref

    def __len__(self) -> int:
        return len(self._refs)

    async def drain(self, grace_s: float = 5.0, max_wait_s: float = 15.0) -> None:
        """Before the replica exits: wait until its last hand-off is `grace_s` old, so a pool
        still fetching one (a decode about to read a prompt's KV) finds it. The objects die
        with this replica, their owner."""
        deadline = time.monotonic() + max_wait_s
        while self._refs and time.monotonic() < deadline and time.monotonic() - self._refs[-1][0] < grace_s:
            await asyncio.sleep(0.1)


def _replica_id() -> str:
    from ray import serve

    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a Serve replica (tests calling the class directly)
        return "local"


def _start_heartbeat(
    telemetry: dict[str, Any] | None, pool: str, stage: str, site: str, stats, on_mode=None, engine_metrics=None, replica_id: str | None = None
) -> Heartbeat | None:
    """Publish this replica's load to Redis every second and follow the planned power mode
    (`None`: telemetry is off)."""
    if not telemetry:
        return None
    settings = TelemetrySettings(**{**telemetry, "power_modes": tuple(tuple(m) for m in telemetry.get("power_modes", ()))})
    heartbeat = Heartbeat(
        settings, pool=pool, stage=stage, site=site, replica_id=replica_id or _replica_id(), stats=stats, on_mode=on_mode, engine_metrics=engine_metrics
    )
    heartbeat.start()
    return heartbeat


class LLMReplica:
    """What every LLM pool replica is, whatever engine runs inside: a backend
    (`workers/backends/contract.py`) and everything around it that the control loop needs —
    heartbeats into Redis, routing stats for the request routers, the planner's power mode,
    the engine's own metrics, hand-offs through Ray's object store and health checks. Owning
    these here, not in the backends, gives every backend all of them by construction."""

    stage = "colocated"

    async def __init__(
        self, model_path: str | None, engine_config: dict[str, Any], pool: str, site: str, telemetry: dict[str, Any] | None = None,
        bundled: str = DEFAULT_MODEL_NAME, backend: str = "pavana",
    ) -> None:
        self.pool = pool
        self.site = site
        self.replica_id = _replica_id()
        self.backend = make_backend(
            backend, model_path=model_path, bundled=bundled, engine_config=engine_config, stage=self.stage, replica_id=self.replica_id
        )
        self.power = self.backend.power_control()
        # A mode this hardware cannot enact refuses the replica now, not silently later.
        self.power.check(power_modes(telemetry))
        self.held = HeldRefs()  # KV hand-offs this replica has produced
        self.heartbeat = _start_heartbeat(
            telemetry, pool, self.stage, site, self.record_routing_stats, on_mode=self.power.apply,
            engine_metrics=self.backend.metrics_text, replica_id=self.replica_id,
        )
        log.info("%s replica up at site %s on the %s backend", self.stage, site, self.backend.name)

    def record_routing_stats(self) -> dict[str, Any]:
        """Called by Ray Serve for request routers (`router/replica_router.py`) and by the
        heartbeat."""
        return routing_stats(self.backend.stats(), self.pool, self.site)

    async def stats(self) -> dict[str, Any]:
        return self.record_routing_stats()

    async def __del__(self) -> None:
        """Ray Serve calls this on graceful shutdown (a scale-down, a dark site)."""
        await self.held.drain()
        if self.heartbeat is not None:
            await self.heartbeat.stop()
        await self.backend.shutdown()

    async def check_health(self) -> None:
        await self.backend.check_health()

    @staticmethod
    async def _image_spans(images: tuple[ImageInput, ...]) -> list[MultimodalSpan]:
        embeds = await asyncio.gather(*(img.embeds_ref for img in images)) if images else []
        return [MultimodalSpan(img.offset, img.length, img.content_hash, e) for img, e in zip(images, embeds)]


class ColocatedReplica(LLMReplica):
    """Prefill and decode in one replica, Sarathi-Serve style."""

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        async for chunk in self.backend.generate(request, await self._image_spans(request.images)):
            yield chunk


class PrefillReplica(LLMReplica):
    stage = "prefill"

    async def prefill(self, request: GenerateRequest) -> PrefillResult:
        done = await self.backend.prefill(request, await self._image_spans(request.images))
        if done.handoff is None:  # the first token already ended the request
            return PrefillResult(first=done.first, num_prompt_tokens=done.num_prompt_tokens)
        return PrefillResult(
            first=done.first,
            kv_ref=[self.held.hold(ray.put(done.handoff))],
            num_prompt_tokens=done.num_prompt_tokens,
            mm_hashes=done.mm_hashes,
        )


class DecodeReplica(LLMReplica):
    stage = "decode"

    async def decode(self, request: GenerateRequest, prefilled: PrefillResult) -> AsyncIterator[TokenChunk]:
        """Continue `request` (the one the prefill replica was given) from the KV its prefill
        left in the object store."""
        handoff = await prefilled.kv_ref[0]
        done = Prefilled(first=prefilled.first, handoff=handoff, num_prompt_tokens=prefilled.num_prompt_tokens, mm_hashes=prefilled.mm_hashes)
        async for chunk in self.backend.decode(request, done):
            yield chunk


def routing_stats(stats: BackendStats, pool: str, site: str) -> dict[str, Any]:
    """A backend's stats as the request routers and the heartbeat read them."""
    return {
        "pool": pool,
        "site": site,
        "running": stats.running,
        "waiting": stats.waiting,
        "queued_prefill_tokens": stats.queued_prefill_tokens,
        "free_kv_blocks": stats.free_kv_blocks,
        "total_kv_blocks": stats.total_kv_blocks,
        "tokens_per_s": stats.tokens_per_s,
        "busy_fraction": stats.busy_fraction,
        "prefill_tokens_per_busy_s": stats.prefill_tokens_per_busy_s,
        "decode_tokens_per_busy_s": stats.decode_tokens_per_busy_s,
        "prefix_hashes": sorted(stats.prefix_hashes)[:MAX_ADVERTISED_PREFIX_HASHES],
    }


def power_modes(telemetry: dict[str, Any] | None) -> tuple[Mode, ...]:
    """The site's power modes a replica must be able to enact (none without telemetry)."""
    return tuple(Mode(*m) for m in (telemetry or {}).get("power_modes", ()))


class VisionReplica:
    """Encodes images into embeddings, once per distinct image (content-hash cache)."""

    stage = "vision"

    async def __init__(
        self, model_path: str | None, pool: str, site: str, telemetry: dict[str, Any] | None = None, cache_size: int = 256,
        bundled: str = DEFAULT_MODEL_NAME,
    ) -> None:
        from workers.vision.encoder import VisionEncoder

        self.encoder = VisionEncoder.from_pretrained(str(model_dir(model_path, bundled)), cache_size=cache_size)
        self.pool = pool
        self.site = site
        self._lock = asyncio.Lock()
        self._busy: list[tuple[float, float, int]] = []  # (end, seconds, images) over the last 10 s
        self._queued_images = 0  # waiting for the encoder or being encoded: demand, not throughput
        self.held = HeldRefs()
        self.heartbeat = _start_heartbeat(telemetry, pool, self.stage, site, self.record_routing_stats)

    async def encode(self, images: list[bytes]) -> list[Any]:
        """One ObjectRef of embeddings per image, in order; a bad image raises `ValueError`
        naming it. (Refs nested in a returned list reach the caller unresolved.)"""
        self._queued_images += len(images)
        try:
            async with self._lock:  # one forward pass at a time; requests queue here
                started = time.monotonic()
                embeds = await asyncio.get_running_loop().run_in_executor(None, self.encoder.encode, images)
                ended = time.monotonic()
        finally:
            self._queued_images -= len(images)
        self._busy.append((ended, ended - started, len(images)))
        return [self.held.hold(ray.put(e)) for e in embeds]

    async def __del__(self) -> None:
        """Ray Serve calls this on graceful shutdown: let in-flight hand-offs be fetched."""
        await self.held.drain()
        if self.heartbeat is not None:
            await self.heartbeat.stop()

    def record_routing_stats(self) -> dict[str, Any]:
        now = time.monotonic()
        self._busy = [b for b in self._busy if now - b[0] <= 10.0]
        return {
            "pool": self.pool,
            "site": self.site,
            "busy_fraction": min(1.0, sum(b[1] for b in self._busy) / 10.0),
            "tokens_per_s": sum(b[2] for b in self._busy) * self.encoder.num_image_tokens / 10.0,
            "images_per_s": sum(b[2] for b in self._busy) / 10.0,
            "queued_images": self._queued_images,
        }
