"""The Ray Serve deployments of the pools: vision encoder, prefill, decode and colocated.

Each replica owns one engine (or one vision encoder) and serves many requests at once: the
engine's stepping loop batches whatever is in flight. Large payloads — image embeddings and
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

from workers.engine.async_engine import AsyncEngine
from workers.engine.bundled import model_dir
from workers.engine.default_model import DEFAULT_MODEL_NAME
from workers.engine.config import EngineConfig
from workers.engine.llm_engine import LLMEngine
from workers.engine.outputs import KVHandoff, RequestOutput
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


def _start_heartbeat(telemetry: dict[str, Any] | None, pool: str, stage: str, site: str, stats, on_mode=None) -> Heartbeat | None:
    """Publish this replica's load to Redis every second and follow the planned power mode
    (`None`: telemetry is off)."""
    if not telemetry:
        return None
    settings = TelemetrySettings(**{**telemetry, "power_modes": tuple(tuple(m) for m in telemetry.get("power_modes", ()))})
    heartbeat = Heartbeat(settings, pool=pool, stage=stage, site=site, replica_id=_replica_id(), stats=stats, on_mode=on_mode)
    heartbeat.start()
    return heartbeat


def _chunk(out: RequestOutput, stage: str, replica_id: str = "") -> TokenChunk:
    return TokenChunk(
        request_id=out.request_id,
        token_ids=list(out.new_token_ids),
        text=out.new_text,
        finished=out.finished and out.handoff is None,
        finish_reason=out.finish_reason,
        num_prompt_tokens=out.num_prompt_tokens,
        num_output_tokens=out.num_output_tokens,
        stage=stage,
        logprobs=tuple(out.logprobs),
        prompt_logprobs=tuple(out.prompt_logprobs),
        replica_id=replica_id,
    )


class EngineReplica:
    """What every LLM pool replica shares: an engine, its loop and its routing stats."""

    mode = "colocated"
    stage = "colocated"

    async def __init__(
        self, model_path: str | None, engine_config: dict[str, Any], pool: str, site: str, telemetry: dict[str, Any] | None = None,
        bundled: str = DEFAULT_MODEL_NAME,
    ) -> None:
        config = EngineConfig(**{**engine_config, "mode": self.mode})
        self.engine = LLMEngine(model_dir(model_path, bundled), config)
        self.async_engine = AsyncEngine(self.engine)
        self.pool = pool
        self.site = site
        self.replica_id = _replica_id()
        self.held = HeldRefs()  # KV hand-offs this replica has produced
        self.heartbeat = _start_heartbeat(
            telemetry, pool, self.stage, site, self.record_routing_stats,
            on_mode=lambda mode: self.async_engine.set_throughput_fraction(mode.throughput_fraction),
        )
        log.info("%s replica up at site %s: %s", self.stage, site, self.engine.model_path)

    def record_routing_stats(self) -> dict[str, Any]:
        """Called by Ray Serve for request routers (`router/replica_router.py`)."""
        stats = self.async_engine.stats()
        hashes = sorted(stats.prefix_hashes)[:MAX_ADVERTISED_PREFIX_HASHES]
        return {
            "pool": self.pool,
            "site": self.site,
            "running": stats.running,
            "waiting": stats.waiting,
            "queued_prefill_tokens": stats.queued_prefill_tokens,
            "free_kv_blocks": stats.free_kv_blocks,
            "total_kv_blocks": stats.total_kv_blocks,
            "tokens_per_s": stats.tokens_per_s,
            "busy_fraction": stats.busy_fraction,
            "prefill_tokens_per_busy_s": stats.prefill_tokens_per_busy_s,
            "decode_tokens_per_busy_s": stats.decode_tokens_per_busy_s,
            "prefix_hashes": hashes,
        }

    async def stats(self) -> dict[str, Any]:
        return self.record_routing_stats()

    async def __del__(self) -> None:
        """Ray Serve calls this on graceful shutdown (a scale-down, a dark site)."""
        await self.held.drain()
        if self.heartbeat is not None:
            await self.heartbeat.stop()

    async def check_health(self) -> None:
        if self.async_engine._dead is not None:
            raise RuntimeError(f"engine loop failed: {self.async_engine._dead!r}")

    @staticmethod
    async def _image_spans(images: tuple[ImageInput, ...]) -> list[MultimodalSpan]:
        embeds = await asyncio.gather(*(img.embeds_ref for img in images)) if images else []
        return [MultimodalSpan(img.offset, img.length, img.content_hash, e) for img, e in zip(images, embeds)]

    async def _generate(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        spans = await self._image_spans(request.images)
        async for out in self.async_engine.generate(
            request.request_id, request.prompt_token_ids, request.params, spans, priority=request.priority, deadline_s=request.deadline_s,
            resume_token_ids=request.resume_token_ids, resume_text_chars=request.resume_text_chars,
        ):
            yield out


class ColocatedReplica(EngineReplica):
    """Prefill and decode in one replica, Sarathi-Serve style."""

    async def generate(self, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        async for out in self._generate(request):
            yield _chunk(out, self.stage, self.replica_id)


class PrefillReplica(EngineReplica):
    mode = "prefill"
    stage = "prefill"

    async def prefill(self, request: GenerateRequest) -> PrefillResult:
        last = None
        async for out in self._generate(request):
            last = out
        assert last is not None and last.finished
        if last.handoff is None:  # the first token already ended the request
            return PrefillResult(first=_chunk(last, self.stage, self.replica_id), num_prompt_tokens=last.num_prompt_tokens)
        return PrefillResult(
            first=_chunk(last, self.stage, self.replica_id),
            kv_ref=[self.held.hold(ray.put(last.handoff.kv))],
            num_prompt_tokens=last.handoff.num_prompt_tokens,
            mm_hashes=last.handoff.mm_hashes,
        )


class DecodeReplica(EngineReplica):
    mode = "decode"
    stage = "decode"

    async def decode(self, request: GenerateRequest, prefilled: PrefillResult) -> AsyncIterator[TokenChunk]:
        """Continue `request` from the KV its prefill left; `request` is the one the prefill
        replica was given, so a resumed request's carried output sits between the prompt and
        the prefill's first token, as it does in the KV."""
        kv = await prefilled.kv_ref[0]
        handoff = KVHandoff(
            request_id=request.request_id,
            token_ids=[*request.prompt_token_ids, *request.resume_token_ids, *prefilled.first.token_ids],
            num_prompt_tokens=prefilled.num_prompt_tokens,
            kv=kv,
            params=request.params,
            mm_hashes=prefilled.mm_hashes,
            num_text_chars_emitted=request.resume_text_chars + len(prefilled.first.text),
        )
        async for out in self.async_engine.generate_from_handoff(handoff, priority=request.priority, deadline_s=request.deadline_s):
            yield _chunk(out, self.stage, self.replica_id)


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
