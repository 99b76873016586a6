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

A stream also survives its site. A whole site goes when the node that carries it leaves the
cluster: every replica there dies at once, and Serve then holds each new call to its pools
until a replica could be placed, which is never. So the orchestrator remembers, per site, the
last call that failed for want of a replica (`router.site_router.SiteLoss`) until a call made
after it is answered there, and `failover_site` sends every further try, and every request the
ingress would still send there, to a site without such a loss. With another site to go to, a
call that no replica takes within `PLACEMENT_TIMEOUT_S` counts as such a loss too (Serve gives
a call to a replica at once when its pool has one), so no request waits on a lost site. On
another site a request starts afresh from what was streamed: images encoded again (their
embeddings may have died with the old site), the resumed request prefilled there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from router.errors import unwrap
from router.site_router import SiteLoss, failover_site, site_is_lost
from workers.requests import GenerateRequest, ImageInput, PrefillResult, TokenChunk

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # tries of a stage in a row that end with its replica lost and nothing new streamed
RETRY_BACKOFF_S = 0.25  # × failures in a row: lets Serve's router notice the dead replica

VISION_TIMEOUT_S = 20.0
# With another site to go to, a call that no replica of its pool takes within this long finds
# the pool gone (its site lost): the request moves on.
PLACEMENT_TIMEOUT_S = 5.0

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

    async def absorb(
        self, stage: str, exc: BaseException, streamed: Streamed, next_step: str, *, reason_ok: bool = False, backoff: bool = True
    ) -> None:
        """Return (after a backoff, unless the try goes elsewhere) when the failed call may be
        tried again as `next_step` says; raise `exc` when it is not a replica loss (nor
        `reason_ok`) or the row is `MAX_ATTEMPTS` long."""
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
        if backoff:
            await asyncio.sleep(RETRY_BACKOFF_S * self.in_a_row)


class StageUnavailable(RuntimeError):
    """A pool cannot serve now (no replica answers); the ingress answers 503 with Retry-After."""

    retry_after_s = 5.0


class PoolUnreachable(StageUnavailable):
    """No replica of a pool took a call within `PLACEMENT_TIMEOUT_S`: its site is lost."""


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


@dataclass(slots=True)
class _Progress:
    """Where one request stands: the site it runs at, its images' embeddings there, and the
    KV hand-off its decode starts from (the request a prefill was given, and its answer)."""

    site: str
    stage: str = ""  # the stage whose call is under way
    encoded: tuple[str, GenerateRequest] | None = None  # (site, request with its embeddings placed)
    handoff: tuple[GenerateRequest, PrefillResult] | None = None
    tokens_before_decode: int = 0


class Orchestrator:
    def __init__(self, sites: dict[str, SitePools], *, clock: Callable[[], float] = time.monotonic) -> None:
        if not sites:
            raise ValueError("sites: the orchestrator needs at least one site's pools")
        self.sites = sites
        self.losses: dict[str, SiteLoss] = {}  # site -> its last call lost for want of a replica, not answered since
        self._clock = clock

    async def generate(
        self, request: GenerateRequest, images: list[bytes], site: str, on_site: Callable[[str], None] | None = None
    ) -> AsyncIterator[TokenChunk]:
        """Stream a request through its stages, across replica and site losses (see the
        module's docstring). `request.images` carries the placement of each image's tokens; the
        vision pool fills in where its embeddings are. `on_site` is told each site the request
        runs at, the first and any it moves to (its record names where it ended)."""
        if images:
            self._check_images(self.sites[site], request, images)
        progress = _Progress(self._site_for(site, request.request_id))
        streamed = Streamed()
        failures = _Failures(request.request_id)
        while True:
            site = progress.site
            if on_site is not None:
                on_site(site)
            try:
                if images and (progress.encoded is None or progress.encoded[0] != site):
                    progress.stage = "vision"
                    progress.encoded = (site, await self._encode_images(site, request, images))
                placed = progress.encoded[1] if images else request
                stages = self._colocated if not self.sites[site].disaggregated else self._disaggregated
                async for chunk in stages(site, placed, streamed, progress):
                    streamed.add(chunk)
                    yield chunk
                    if streamed.finished:
                        return
                return
            except Exception as exc:
                if streamed.finished:  # the client has the whole answer: nothing to carry on
                    log.info("request %s: replica lost after the last chunk (%s)", request.request_id, type(unwrap(exc)).__name__)
                    return
                await self._carry_on(exc, streamed, failures, progress)

    async def _carry_on(self, exc: BaseException, streamed: Streamed, failures: _Failures, progress: _Progress) -> None:
        """After a failed call: where and how the request goes on (or `exc` raised)."""
        site, stage = progress.site, progress.stage
        unreachable = isinstance(exc, PoolUnreachable)
        lost_kv = stage == "decode" and kv_lost(exc)
        # A prefill or colocated replica could not fetch the images' embeddings: they died with
        # the vision replica that made them. Encode them again.
        lost_embeddings = stage in ("prefill", "colocated") and progress.encoded is not None and kv_lost(exc)
        if replica_lost(exc) or unreachable:
            self.losses[site] = SiteLoss(self._clock(), f"{stage}: {type(unwrap(exc)).__name__}")
        carried = len(streamed.token_ids)
        moved = self._next_site(site)
        if moved.site != site:
            progress.site, progress.handoff = moved.site, None  # its KV stays behind: prefill there
            next_step = f"{moved.reason}: moving there, tokens_carried={carried}"
        elif lost_embeddings:
            progress.encoded = None
            next_step = f"encoding the images again, tokens_carried={carried}"
        elif stage == "decode" and (lost_kv or carried > progress.tokens_before_decode):
            progress.handoff = None  # the KV no longer matches what the client has, or is gone: prefill again
            next_step = f"migrating: prefill again, tokens_carried={carried}"
        elif stage == "decode":
            next_step = "retrying from the same KV"
        else:
            next_step = f"migrating, tokens_carried={carried}" if carried else "retrying"
        await failures.absorb(stage, exc, streamed, next_step, reason_ok=lost_kv or lost_embeddings or unreachable, backoff=moved.site == site)

    def _site_for(self, site: str, request_id: str) -> str:
        choice = self._next_site(site)
        if choice.site != site:
            log.warning("request %s: %s", request_id, choice.reason)
        return choice.site

    def _next_site(self, site: str):
        return failover_site(site, list(self.sites), self.losses, self._clock())

    def _answered(self, site: str, called_s: float) -> None:
        """A call made at `called_s` was answered at `site`: a loss recorded before it is over."""
        loss = self.losses.get(site)
        if loss is not None and loss.at_s < called_s:
            del self.losses[site]

    async def _placed(self, response: Any, site: str, stage: str) -> None:
        """Wait until Serve has given the call to a replica, at most `PLACEMENT_TIMEOUT_S` when
        another site could take the request instead; then `PoolUnreachable`. (Serve holds a call
        to a pool without replicas until one is placed, which at a lost site is never.)"""
        now = self._clock()
        elsewhere = any(s != site and not site_is_lost(self.losses.get(s), now) for s in self.sites)
        assignment = getattr(response, "_fetch_future_result_async", None)  # Serve's DeploymentResponse
        if not elsewhere or assignment is None:
            return
        try:
            await asyncio.wait_for(assignment(), PLACEMENT_TIMEOUT_S)
        except TimeoutError:
            response.cancel()
            raise PoolUnreachable(
                f"No replica of the {stage} pool at site {site} took the request within {PLACEMENT_TIMEOUT_S:.0f} s."
            ) from None

    async def _colocated(
        self, site: str, request: GenerateRequest, streamed: Streamed, progress: _Progress
    ) -> AsyncIterator[TokenChunk]:
        progress.stage = "colocated"
        called = self._clock()
        response = self.sites[site].colocated.options(stream=True).generate.remote(streamed.resume(request))
        await self._placed(response, site, "colocated")
        async for chunk in response:
            self._answered(site, called)
            yield chunk

    async def _disaggregated(
        self, site: str, request: GenerateRequest, streamed: Streamed, progress: _Progress
    ) -> AsyncIterator[TokenChunk]:
        """Prefill, then decode from its KV. A decode lost before it streamed is tried again
        from the same KV; one lost after (or whose KV is gone) has its request resumed from
        what was streamed: prefilled again, then decoded from the new KV."""
        pools = self.sites[site]
        if progress.handoff is None:
            progress.stage = "prefill"
            prefill_request = streamed.resume(request)
            called = self._clock()
            response = pools.prefill.prefill.remote(prefill_request)
            await self._placed(response, site, "prefill")
            prefilled = await response
            self._answered(site, called)
            yield prefilled.first
            if prefilled.first.finished:
                return
            progress.handoff = (prefill_request, prefilled)
            progress.tokens_before_decode = len(streamed.token_ids)
        progress.stage = "decode"
        called = self._clock()
        response = pools.decode.options(stream=True).decode.remote(*progress.handoff)
        await self._placed(response, site, "decode")
        async for chunk in response:
            self._answered(site, called)
            yield chunk

    @staticmethod
    def _check_images(pools: SitePools, request: GenerateRequest, images: list[bytes]) -> None:
        if pools.vision is None:
            raise ValueError("messages: this deployment has no vision pool, so images cannot be served")
        if len(images) != len(request.images):
            raise ValueError(f"images: {len(images)} images for {len(request.images)} placeholders")

    async def _encode_images(self, site: str, request: GenerateRequest, images: list[bytes]) -> GenerateRequest:
        called = self._clock()
        response = self.sites[site].vision.encode.remote(images)
        await self._placed(response, site, "vision")
        try:
            refs = await within(response, VISION_TIMEOUT_S)
        except TimeoutError:
            raise StageUnavailable(
                f"The vision pool did not answer within {VISION_TIMEOUT_S:.0f} s, so images cannot be served now; "
                "text-only requests are unaffected."
            ) from None
        self._answered(site, called)
        placed: list[ImageInput] = [dataclasses.replace(img, embeds_ref=ref) for img, ref in zip(request.images, refs)]
        return dataclasses.replace(request, images=tuple(placed))


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
