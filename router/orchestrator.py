"""Stage orchestration of one request: vision (when images) ▸ prefill ▸ decode, or colocated.

The orchestrator holds deployment handles and passes references between pools: image
embeddings and KV caches stay in Ray's object store, so they never pass through the router.

A stream survives its replica. The orchestrator keeps what the client has received of the
output (token ids and characters of text); when a stage call fails because its replica is gone
(Ray's actor errors, Serve's unavailable replica), it carries on with another replica of the
pool (Serve's router picks a live one):
- before anything streamed, the call is simply repeated: a prefill or colocated generate
  anew, a decode from the same KV hand-off, which the prefill replica keeps for a minute;
- after tokens streamed, the request migrates: it is sent again with the output the client
  already has (`GenerateRequest.resume_token_ids`, `resume_text_chars`); the engine recomputes
  it, as after a preemption, and streams only what follows. Disaggregated, the resumed request
  is prefilled again and its first chunk is the next token, then decode continues from its KV.
  A decode whose KV hand-off was lost with its prefill replica is re-prefilled the same way.
So the client sees one uninterrupted stream: greedy output equals an undisturbed run, and
seeded sampling continues its sequence (draws are seeded by output position). Failures that
make no progress are bounded by `MAX_ATTEMPTS` in a row; any other error ends the stream with
that error. A vision pool that does not answer within `VISION_TIMEOUT_S` (down, or scaled to
zero) fails image requests with 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from router.errors import unwrap
from workers.requests import GenerateRequest, ImageInput, PrefillResult, TokenChunk

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ATTEMPTS = 3  # tries of a stage in a row that end with its replica lost and nothing new streamed
RETRY_BACKOFF_S = 0.25  # × failures in a row: lets Serve's router notice the dead replica

VISION_TIMEOUT_S = 20.0

# Failures of the replica rather than of the request, matched by name (and base class name)
# so that this module imports no Ray.
_REPLICA_LOST = frozenset({"RayActorError", "ActorDiedError", "ActorUnavailableError", "ReplicaUnavailableError"})
# A KV hand-off's object gone with the prefill replica that owned it (Ray's `ObjectLostError`
# and its kinds: owner died, reconstruction failed, fetch timed out).
_KV_LOST = frozenset({"ObjectLostError"})


def replica_lost(exc: BaseException) -> bool:
    return any(cls.__name__ in _REPLICA_LOST for cls in type(unwrap(exc)).__mro__)


def kv_lost(exc: BaseException) -> bool:
    return any(cls.__name__ in _KV_LOST for cls in type(unwrap(exc)).__mro__)


@dataclass(slots=True)
class Streamed:
    """What the client has received of one request's output, across stages and replicas: the
    state a migrated request resumes from."""

    token_ids: list[int] = field(default_factory=list)
    text_chars: int = 0
    finished: bool = False

    def add(self, chunk: TokenChunk) -> None:
        self.token_ids.extend(chunk.token_ids)
        self.text_chars += len(chunk.text)
        self.finished = self.finished or chunk.finished

    def resume(self, request: GenerateRequest) -> GenerateRequest:
        """`request` continued after what was streamed (itself when nothing was)."""
        if not self.token_ids and not self.text_chars:
            return request
        return dataclasses.replace(
            request,
            resume_token_ids=(*request.resume_token_ids, *self.token_ids),
            resume_text_chars=request.resume_text_chars + self.text_chars,
        )


class _Failures:
    """Replica losses of one request's stages, in a row: a loss after which the stream made
    progress (a new token reached the client) starts a new row, so a long stream survives
    several losses, while a pool whose replicas keep dying under it fails the request after
    `MAX_ATTEMPTS` tries."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.in_a_row = 0
        self._tokens_at_last = -1

    async def absorb(self, stage: str, exc: BaseException, streamed: Streamed, next_step: str, *, reason_ok: bool = False) -> None:
        """Return (after a backoff) when the failed call may be tried again as `next_step`
        says; raise `exc` when it is not a replica loss (nor `reason_ok`) or the row is
        `MAX_ATTEMPTS` long."""
        if not (replica_lost(exc) or reason_ok):
            raise exc
        if len(streamed.token_ids) != self._tokens_at_last:
            self.in_a_row = 0
            self._tokens_at_last = len(streamed.token_ids)
        self.in_a_row += 1
        cause = type(unwrap(exc)).__name__
        if self.in_a_row >= MAX_ATTEMPTS:
            log.error("request %s: %s failed %d times in a row (%s); giving up", self.request_id, stage, self.in_a_row, cause)
            raise exc
        log.warning(
            "request %s: %s replica lost (%s) with %d tokens streamed; %s (attempt %d)",
            self.request_id, stage, cause, len(streamed.token_ids), next_step, self.in_a_row + 1,
        )
        await asyncio.sleep(RETRY_BACKOFF_S * self.in_a_row)


class StageUnavailable(RuntimeError):
    """A pool cannot serve now (no replica answers); the ingress answers 503 with Retry-After."""

    retry_after_s = 5.0


@dataclass(frozen=True, slots=True)
class SitePools:
    """Deployment handles of one site's pools; a topology uses a subset of them."""

    vision: Any = None
    prefill: Any = None
    decode: Any = None
    colocated: Any = None

    @property
    def disaggregated(self) -> bool:
        return self.colocated is None


class Orchestrator:
    def __init__(self, sites: dict[str, SitePools]) -> None:
        if not sites:
            raise ValueError("sites: the orchestrator needs at least one site's pools")
        self.sites = sites

    async def generate(
        self, request: GenerateRequest, images: list[bytes], site: str
    ) -> AsyncIterator[TokenChunk]:
        """Stream a request through its stages, across replica losses (see the module's
        docstring). `request.images` carries the placement of each image's tokens; the vision
        pool fills in where its embeddings are."""
        pools = self.sites[site]
        if images:
            request = await self._encode_images(pools, request, images)
        stages = self._colocated(pools, request) if not pools.disaggregated else self._disaggregated(pools, request)
        async for chunk in stages:
            yield chunk

    @staticmethod
    async def _colocated(pools: SitePools, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        streamed = Streamed()
        failures = _Failures(request.request_id)
        while True:
            try:
                async for chunk in pools.colocated.options(stream=True).generate.remote(streamed.resume(request)):
                    streamed.add(chunk)
                    yield chunk
                return
            except Exception as exc:
                if streamed.finished:  # the client has the whole answer: nothing to carry on
                    log.info("request %s: replica lost after the last chunk (%s)", request.request_id, type(unwrap(exc)).__name__)
                    return
                carried = len(streamed.token_ids)
                await failures.absorb("colocated", exc, streamed, f"migrating, tokens_carried={carried}" if carried else "retrying")

    @staticmethod
    async def _disaggregated(pools: SitePools, request: GenerateRequest) -> AsyncIterator[TokenChunk]:
        """Prefill, then decode from its KV. A decode lost before it streamed is tried again
        from the same KV; one lost after (or whose KV is gone) has its request resumed from
        what was streamed: prefilled again, then decoded from the new KV."""
        streamed = Streamed()
        failures = _Failures(request.request_id)
        handoff: tuple[GenerateRequest, PrefillResult] | None = None  # the request a prefill was given, and its answer
        tokens_before_decode = 0
        while True:
            stage = "prefill"
            try:
                if handoff is None:
                    prefill_request = streamed.resume(request)
                    prefilled = await pools.prefill.prefill.remote(prefill_request)
                    streamed.add(prefilled.first)
                    yield prefilled.first
                    if prefilled.first.finished:
                        return
                    handoff = (prefill_request, prefilled)
                    tokens_before_decode = len(streamed.token_ids)
                stage = "decode"
                async for chunk in pools.decode.options(stream=True).decode.remote(*handoff):
                    streamed.add(chunk)
                    yield chunk
                return
            except Exception as exc:
                if streamed.finished:
                    log.info("request %s: replica lost after the last chunk (%s)", request.request_id, type(unwrap(exc)).__name__)
                    return
                lost_kv = stage == "decode" and kv_lost(exc)
                carried = len(streamed.token_ids)
                if stage == "decode" and (lost_kv or carried > tokens_before_decode):
                    handoff = None  # the KV no longer matches what the client has, or is gone: prefill again
                    next_step = f"migrating: prefill again, tokens_carried={carried}"
                else:
                    next_step = "retrying from the same KV" if stage == "decode" else "retrying"
                await failures.absorb(stage, exc, streamed, next_step, reason_ok=lost_kv)

    @staticmethod
    async def _call_with_retry(stage: str, call: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return await call()
            except Exception as exc:
                if not replica_lost(exc) or attempt == MAX_ATTEMPTS:
                    raise
                log.warning("%s replica lost (%s); retrying on another (attempt %d)", stage, type(unwrap(exc)).__name__, attempt + 1)
                await asyncio.sleep(RETRY_BACKOFF_S * attempt)
        raise AssertionError("unreachable")

    @staticmethod
    async def _encode_images(pools: SitePools, request: GenerateRequest, images: list[bytes]) -> GenerateRequest:
        if pools.vision is None:
            raise ValueError("messages: this deployment has no vision pool, so images cannot be served")
        if len(images) != len(request.images):
            raise ValueError(f"images: {len(images)} images for {len(request.images)} placeholders")
        refs = await Orchestrator._call_with_retry("vision", lambda: Orchestrator._encode_within_timeout(pools.vision, images))
        placed: list[ImageInput] = [dataclasses.replace(img, embeds_ref=ref) for img, ref in zip(request.images, refs)]
        return dataclasses.replace(request, images=tuple(placed))

    @staticmethod
    async def _encode_within_timeout(vision: Any, images: list[bytes]) -> list[Any]:
        try:
            return await within(vision.encode.remote(images), VISION_TIMEOUT_S)
        except TimeoutError:
            raise StageUnavailable(
                f"The vision pool did not answer within {VISION_TIMEOUT_S:.0f} s, so images cannot be served now; "
                "text-only requests are unaffected."
            ) from None


async def within(response: Any, timeout_s: float) -> Any:
    """The result of a Serve `DeploymentResponse`, or `TimeoutError` after `timeout_s` with the
    request cancelled, so that it does not wait on in the deployment's queue."""

    async def result() -> Any:
        return await response

    try:
        return await asyncio.wait_for(result(), timeout_s)
    except TimeoutError:
        response.cancel()
        raise
