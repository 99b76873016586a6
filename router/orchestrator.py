"""Stage orchestration of one request: vision (when images) ▸ prefill ▸ decode, or colocated.

The orchestrator holds deployment handles and passes references between pools: image
embeddings and KV caches stay in Ray's object store, so they never pass through the router.

A replica that dies costs no request that has not yet streamed from it: a stage call that
fails because its replica is gone (Ray's actor errors, Serve's unavailable replica) is retried
on another replica of the pool, a decode from the same KV hand-off, which the prefill replica
keeps for a minute. Once a stage has streamed a token to the client, its failure ends the
stream with an error instead: a token cannot be taken back. A vision pool that does not answer
within `VISION_TIMEOUT_S` (down, or scaled to zero) fails image requests with 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from router.errors import unwrap
from workers.requests import GenerateRequest, ImageInput, TokenChunk

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ATTEMPTS = 3  # per stage, when replicas die under it
RETRY_BACKOFF_S = 0.25  # × attempt: lets Serve's router notice the dead replica
VISION_TIMEOUT_S = 20.0

# Failures of the replica rather than of the request, matched by name (and base class name)
# so that this module imports no Ray.
_REPLICA_LOST = frozenset({"RayActorError", "ActorDiedError", "ActorUnavailableError", "ReplicaUnavailableError"})


def replica_lost(exc: BaseException) -> bool:
    return any(cls.__name__ in _REPLICA_LOST for cls in type(unwrap(exc)).__mro__)


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
        """Stream a request through its stages. `request.images` carries the placement of each
        image's tokens; the vision pool fills in where its embeddings are."""
        pools = self.sites[site]
        if images:
            request = await self._encode_images(pools, request, images)
        if not pools.disaggregated:
            async for chunk in self._stream_with_retry("colocated", lambda: pools.colocated.options(stream=True).generate.remote(request)):
                yield chunk
            return
        prefilled = await self._call_with_retry("prefill", lambda: pools.prefill.prefill.remote(request))
        yield prefilled.first
        if prefilled.first.finished:
            return
        async for chunk in self._stream_with_retry("decode", lambda: pools.decode.options(stream=True).decode.remote(request, prefilled)):
            yield chunk

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
    async def _stream_with_retry(stage: str, start: Callable[[], Any]) -> AsyncIterator[TokenChunk]:
        """Retry a streaming stage whose replica is lost before it streamed anything."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            emitted = False
            try:
                async for chunk in start():
                    emitted = True
                    yield chunk
                return
            except Exception as exc:
                if emitted or not replica_lost(exc) or attempt == MAX_ATTEMPTS:
                    raise
                log.warning("%s replica lost before streaming (%s); retrying on another (attempt %d)", stage, type(unwrap(exc)).__name__, attempt + 1)
                await asyncio.sleep(RETRY_BACKOFF_S * attempt)

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
