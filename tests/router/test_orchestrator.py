"""The orchestrator's retry and migration paths, against fake pools with deterministic faults.

The fakes implement exactly the handle surface the orchestrator uses
(`.options(stream=True).generate.remote(req)`, `.prefill.remote(req)`,
`.options(stream=True).decode.remote(req, prefilled)`, `.encode.remote(images)`) over a small
deterministic "model" whose next token depends on the whole sequence so far: a resumed request
that carried the wrong tokens, or a decode given a KV that does not match its request, streams
different tokens. Faults are raised as exception classes named like Ray's, which is how
`replica_lost` recognises them. The promise under test is the client's: one uninterrupted
stream equal to the undisturbed one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

import router.orchestrator as orchestrator
import router.site_router as site_router
from router.orchestrator import MAX_ATTEMPTS, Orchestrator, SitePools
from workers.requests import GenerateRequest, ImageInput, PrefillResult, SamplingParams, TokenChunk


class ActorDiedError(Exception):
    """Named like Ray's: the replica serving the call died."""


class ObjectLostError(Exception):
    """Named like Ray's base of lost objects."""


class OwnerDiedError(ObjectLostError):
    """Named like Ray's: the owner of an object (the prefill replica holding a KV) died."""


PROMPT = [11, 12, 13, 14]
MAX_TOKENS = 12


def next_token(tokens: list[int]) -> int:
    """A deterministic "greedy model": the next token depends on every token so far."""
    return zlib.crc32(bytes(str(tokens), "ascii")) % 500


def token_text(token: int) -> str:
    return "x" * (token % 4) + f"{token}|"  # text lengths vary, so character counts are checked


def undisturbed(prompt: list[int] = PROMPT, max_tokens: int = MAX_TOKENS) -> list[int]:
    tokens = list(prompt)
    while len(tokens) - len(prompt) < max_tokens:
        tokens.append(next_token(tokens))
    return tokens[len(prompt) :]


def request(rid: str = "r1", max_tokens: int = MAX_TOKENS, images: tuple[ImageInput, ...] = ()) -> GenerateRequest:
    return GenerateRequest(rid, list(PROMPT), SamplingParams(max_tokens=max_tokens, ignore_eos=True), images=images)


class Fault:
    """What the n-th call to a pool method does: stream `after` chunks, then raise `error`."""

    def __init__(self, after: int, error: type[Exception] = ActorDiedError) -> None:
        self.after = after
        self.error = error


class FakePool:
    """One pool's handle. `faults[method]` lists what successive calls do (None: no fault).
    Every call is recorded with its arguments; each call is served by a new "replica" id, as a
    retry would be routed to another replica."""

    def __init__(self, **faults: list[Fault | None]) -> None:
        self.faults = {k: list(v) for k, v in faults.items()}
        self.calls: dict[str, list[tuple[Any, ...]]] = {}
        self.stream = False

    def options(self, *, stream: bool = False) -> FakePool:
        view = FakePool.__new__(FakePool)
        view.__dict__ = dict(self.__dict__)  # shares faults and calls
        view.stream = stream
        return view

    def _call(self, method: str, *args: Any) -> tuple[str, Fault | None]:
        calls = self.calls.setdefault(method, [])
        calls.append(args)
        planned = self.faults.get(method, [])
        return f"{method}-replica-{len(calls)}", (planned[len(calls) - 1] if len(calls) <= len(planned) else None)

    # -- methods, each behind `.remote` ---------------------------------------------------------
    @property
    def generate(self) -> _Remote:
        assert self.stream, "generate is a streaming call"
        return _Remote(self._generate)

    @property
    def prefill(self) -> _Remote:
        return _Remote(self._prefill)

    @property
    def decode(self) -> _Remote:
        assert self.stream, "decode is a streaming call"
        return _Remote(self._decode)

    @property
    def encode(self) -> _Remote:
        return _Remote(self._encode)

    async def _generate(self, req: GenerateRequest) -> AsyncIterator[TokenChunk]:
        replica, fault = self._call("generate", req)
        tokens = [*req.prompt_token_ids, *req.resume_token_ids]
        async for chunk in _continue(req, tokens, replica, fault, "colocated"):
            yield chunk

    async def _prefill(self, req: GenerateRequest) -> PrefillResult:
        replica, fault = self._call("prefill", req)
        await asyncio.sleep(0)
        if fault is not None:
            raise fault.error(f"{replica} died")
        tokens = [*req.prompt_token_ids, *req.resume_token_ids]
        first = _token_chunk(req, tokens, next_token(tokens), replica, "prefill", handoff=True)
        kv = [] if first.finished else [("kv", tuple(tokens))]  # the KV of every token but the first
        return PrefillResult(first=first, kv_ref=kv, num_prompt_tokens=len(req.prompt_token_ids))

    async def _decode(self, req: GenerateRequest, prefilled: PrefillResult) -> AsyncIterator[TokenChunk]:
        replica, fault = self._call("decode", req, prefilled)
        tokens = [*req.prompt_token_ids, *req.resume_token_ids]
        assert prefilled.kv_ref == [("kv", tuple(tokens))], "the decode's request is not the one its KV was prefilled for"
        tokens += prefilled.first.token_ids
        async for chunk in _continue(req, tokens, replica, fault, "decode"):
            yield chunk

    async def _encode(self, images: list[bytes]) -> list[Any]:
        replica, fault = self._call("encode", images)
        if fault is not None:
            raise fault.error(f"{replica} died")
        return [f"embeds-of-{i}" for i in range(len(images))]


class _Remote:
    def __init__(self, method) -> None:
        self.remote = method


def _token_chunk(req: GenerateRequest, before: list[int], token: int, replica: str, stage: str, *, handoff: bool = False) -> TokenChunk:
    num_output = len(before) + 1 - len(req.prompt_token_ids)
    finished = num_output >= req.params.max_tokens
    return TokenChunk(
        req.request_id, [token], token_text(token), finished=finished, finish_reason="length" if finished else None,
        num_prompt_tokens=len(req.prompt_token_ids), num_output_tokens=num_output, stage=stage, replica_id=replica,
    )


async def _continue(req: GenerateRequest, tokens: list[int], replica: str, fault: Fault | None, stage: str) -> AsyncIterator[TokenChunk]:
    sent = 0
    while len(tokens) - len(req.prompt_token_ids) < req.params.max_tokens:
        if fault is not None and sent == fault.after:
            raise fault.error(f"{replica} died after {sent} chunks")
        await asyncio.sleep(0)
        token = next_token(tokens)
        chunk = _token_chunk(req, tokens, token, replica, stage)
        tokens.append(token)
        sent += 1
        yield chunk
    if fault is not None and sent == fault.after:  # dies after its last chunk
        raise fault.error(f"{replica} died after its last chunk")


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(orchestrator, "RETRY_BACKOFF_S", 0.0)


def colocated(pool: FakePool, vision: FakePool | None = None) -> Orchestrator:
    return Orchestrator({"s": SitePools(colocated=pool, vision=vision)})


def disaggregated(prefill: FakePool, decode: FakePool) -> Orchestrator:
    return Orchestrator({"s": SitePools(prefill=prefill, decode=decode)})


async def stream(orch: Orchestrator, req: GenerateRequest | None = None, images: list[bytes] | None = None) -> list[TokenChunk]:
    return [c async for c in orch.generate(req or request(), images or [], "s")]


def tokens_of(chunks: list[TokenChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def assert_one_uninterrupted_stream(chunks: list[TokenChunk]) -> None:
    """Exactly the undisturbed tokens and text, counted on from one to the end, ending once."""
    expected = undisturbed()
    assert tokens_of(chunks) == expected
    assert "".join(c.text for c in chunks) == "".join(token_text(t) for t in expected)
    assert [c.num_output_tokens for c in chunks] == list(range(1, MAX_TOKENS + 1))
    assert [c.finished for c in chunks] == [False] * (len(chunks) - 1) + [True]


# -- colocated ----------------------------------------------------------------------------------------
async def test_an_undisturbed_colocated_stream_is_one_call():
    pool = FakePool()
    assert_one_uninterrupted_stream(await stream(colocated(pool)))
    assert len(pool.calls["generate"]) == 1


async def test_a_colocated_replica_lost_before_any_token_is_retried_plainly():
    pool = FakePool(generate=[Fault(after=0)])
    chunks = await stream(colocated(pool))
    assert_one_uninterrupted_stream(chunks)
    [(first,), (second,)] = pool.calls["generate"]
    assert second == first and second.resume_token_ids == () and second.resume_text_chars == 0


@pytest.mark.parametrize("k", [1, 5, MAX_TOKENS - 1])
async def test_a_colocated_replica_lost_after_k_tokens_migrates_with_what_the_client_has(k):
    pool = FakePool(generate=[Fault(after=k)])
    chunks = await stream(colocated(pool))
    assert_one_uninterrupted_stream(chunks)
    (resumed,) = pool.calls["generate"][1]
    streamed = undisturbed()[:k]
    assert resumed.resume_token_ids == tuple(streamed)
    assert resumed.resume_text_chars == sum(len(token_text(t)) for t in streamed)
    assert resumed.prompt_token_ids == PROMPT and resumed.request_id == "r1"
    assert {c.replica_id for c in chunks[:k]} == {"generate-replica-1"}
    assert {c.replica_id for c in chunks[k:]} == {"generate-replica-2"}


async def test_a_stream_survives_a_loss_after_each_bit_of_progress_beyond_max_attempts():
    """Losses that each follow new tokens are separate rows: more than MAX_ATTEMPTS of them."""
    pool = FakePool(generate=[Fault(after=2)] * (MAX_ATTEMPTS + 2))
    assert_one_uninterrupted_stream(await stream(colocated(pool)))
    carried = [len(call[0].resume_token_ids) for call in pool.calls["generate"]]
    assert carried == [0, 2, 4, 6, 8, 10, 12][: len(carried)] and len(carried) == MAX_ATTEMPTS + 3


async def test_a_colocated_pool_that_keeps_dying_without_progress_fails_after_max_attempts():
    """The call lost after 3 tokens opens the row; MAX_ATTEMPTS - 1 more losses end it."""
    pool = FakePool(generate=[Fault(after=3)] + [Fault(after=0)] * (MAX_ATTEMPTS - 1))
    got: list[TokenChunk] = []
    with pytest.raises(ActorDiedError):
        async for chunk in colocated(pool).generate(request(), [], "s"):
            got.append(chunk)
    assert tokens_of(got) == undisturbed()[:3]  # nothing repeated, nothing invented
    assert len(pool.calls["generate"]) == MAX_ATTEMPTS


async def test_a_colocated_pool_lost_before_streaming_every_time_fails_after_max_attempts():
    pool = FakePool(generate=[Fault(after=0)] * MAX_ATTEMPTS)
    with pytest.raises(ActorDiedError):
        await stream(colocated(pool))
    assert len(pool.calls["generate"]) == MAX_ATTEMPTS


async def test_an_error_that_is_not_a_lost_replica_ends_the_stream_without_a_retry():
    pool = FakePool(generate=[Fault(after=4, error=ValueError)])
    got: list[TokenChunk] = []
    with pytest.raises(ValueError):
        async for chunk in colocated(pool).generate(request(), [], "s"):
            got.append(chunk)
    assert len(got) == 4 and len(pool.calls["generate"]) == 1


async def test_a_replica_lost_after_the_last_chunk_is_not_retried():
    pool = FakePool(generate=[Fault(after=MAX_TOKENS)])
    assert_one_uninterrupted_stream(await stream(colocated(pool)))
    assert len(pool.calls["generate"]) == 1


# -- disaggregated ------------------------------------------------------------------------------------
async def test_an_undisturbed_disaggregated_stream_is_one_prefill_and_one_decode():
    prefill, decode = FakePool(), FakePool()
    chunks = await stream(disaggregated(prefill, decode))
    assert_one_uninterrupted_stream(chunks)
    assert len(prefill.calls["prefill"]) == 1 and len(decode.calls["decode"]) == 1
    assert chunks[0].stage == "prefill" and {c.stage for c in chunks[1:]} == {"decode"}


async def test_a_prefill_replica_lost_is_retried_on_another():
    prefill, decode = FakePool(prefill=[Fault(after=0), Fault(after=0)]), FakePool()
    assert_one_uninterrupted_stream(await stream(disaggregated(prefill, decode)))
    assert len(prefill.calls["prefill"]) == 3 and all(call[0].resume_token_ids == () for call in prefill.calls["prefill"])


async def test_a_prefill_pool_lost_every_time_fails_after_max_attempts():
    prefill, decode = FakePool(prefill=[Fault(after=0)] * MAX_ATTEMPTS), FakePool()
    with pytest.raises(ActorDiedError):
        await stream(disaggregated(prefill, decode))
    assert len(prefill.calls["prefill"]) == MAX_ATTEMPTS and "decode" not in decode.calls


async def test_a_decode_replica_lost_before_streaming_is_retried_from_the_same_kv():
    prefill, decode = FakePool(), FakePool(decode=[Fault(after=0)])
    chunks = await stream(disaggregated(prefill, decode))
    assert_one_uninterrupted_stream(chunks)
    assert len(prefill.calls["prefill"]) == 1
    (req1, kv1), (req2, kv2) = decode.calls["decode"]
    assert kv2 is kv1 and req2 is req1 and req1.resume_token_ids == ()


@pytest.mark.parametrize("k", [1, 6, MAX_TOKENS - 3])
async def test_a_decode_replica_lost_after_streaming_migrates_by_prefilling_the_resumed_request(k):
    prefill, decode = FakePool(), FakePool(decode=[Fault(after=k)])
    chunks = await stream(disaggregated(prefill, decode))
    assert_one_uninterrupted_stream(chunks)
    streamed = undisturbed()[: 1 + k]  # the prefill's first token and k decoded
    [(first,), (again,)] = prefill.calls["prefill"]
    assert first.resume_token_ids == ()
    assert again.resume_token_ids == tuple(streamed)
    assert again.resume_text_chars == sum(len(token_text(t)) for t in streamed)
    (_, _), (req2, kv2) = decode.calls["decode"]
    assert req2 == again and kv2.first.token_ids == [undisturbed()[1 + k]]
    # The client's stream: prefill, decode on one replica, the re-prefill's token, decode on another.
    assert [c.stage for c in chunks] == ["prefill"] + ["decode"] * k + ["prefill"] + ["decode"] * (MAX_TOKENS - k - 2)
    assert {c.replica_id for c in chunks[1 : 1 + k]} == {"decode-replica-1"}
    assert {c.replica_id for c in chunks[2 + k :]} == {"decode-replica-2"}


async def test_a_decode_lost_one_token_before_the_end_is_finished_by_the_prefill_alone():
    k = MAX_TOKENS - 2
    prefill, decode = FakePool(), FakePool(decode=[Fault(after=k)])
    chunks = await stream(disaggregated(prefill, decode))
    assert_one_uninterrupted_stream(chunks)
    assert len(prefill.calls["prefill"]) == 2 and len(decode.calls["decode"]) == 1
    assert chunks[-1].stage == "prefill" and chunks[-1].finish_reason == "length"


async def test_a_decode_lost_again_after_a_migration_migrates_again():
    prefill, decode = FakePool(), FakePool(decode=[Fault(after=3), Fault(after=0), Fault(after=2)])
    assert_one_uninterrupted_stream(await stream(disaggregated(prefill, decode)))
    carried = [len(call[0].resume_token_ids) for call in prefill.calls["prefill"]]
    # 1 + 3 streamed; the re-prefill's token, then a decode lost before streaming (same KV),
    # then 2 more before the next loss: 1 + 3 + 1 + 2.
    assert carried == [0, 4, 7]
    assert decode.calls["decode"][2][1] is decode.calls["decode"][1][1]


async def test_a_decode_whose_kv_is_gone_with_its_prefill_replica_is_prefilled_again():
    prefill, decode = FakePool(), FakePool(decode=[Fault(after=0, error=OwnerDiedError)])
    assert_one_uninterrupted_stream(await stream(disaggregated(prefill, decode)))
    [(first,), (again,)] = prefill.calls["prefill"]
    assert again.resume_token_ids == (undisturbed()[0],)


async def test_a_decode_error_that_is_not_a_lost_replica_ends_the_stream_without_a_retry():
    prefill, decode = FakePool(), FakePool(decode=[Fault(after=2, error=RuntimeError)])
    got: list[TokenChunk] = []
    with pytest.raises(RuntimeError):
        async for chunk in disaggregated(prefill, decode).generate(request(), [], "s"):
            got.append(chunk)
    assert len(got) == 3 and len(prefill.calls["prefill"]) == 1 and len(decode.calls["decode"]) == 1


async def test_a_request_the_prefill_finishes_never_reaches_decode():
    prefill, decode = FakePool(), FakePool()
    chunks = await stream(disaggregated(prefill, decode), request(max_tokens=1))
    assert tokens_of(chunks) == undisturbed(max_tokens=1) and chunks[-1].finished
    assert "decode" not in decode.calls


# -- vision -------------------------------------------------------------------------------------------
async def test_a_vision_replica_lost_is_retried_and_the_request_then_streams():
    vision, pool = FakePool(encode=[Fault(after=0)]), FakePool()
    req = request(images=(ImageInput(offset=0, length=2, content_hash="h"),))
    chunks = await stream(colocated(pool, vision), req, images=[b"png"])
    assert_one_uninterrupted_stream(chunks)
    assert len(vision.calls["encode"]) == 2
    (sent,) = pool.calls["generate"][0]
    assert sent.images == (dataclasses.replace(req.images[0], embeds_ref="embeds-of-0"),)


async def test_a_vision_pool_lost_every_time_fails_after_max_attempts():
    vision, pool = FakePool(encode=[Fault(after=0)] * MAX_ATTEMPTS), FakePool()
    req = request(images=(ImageInput(offset=0, length=2, content_hash="h"),))
    with pytest.raises(ActorDiedError):
        await stream(colocated(pool, vision), req, images=[b"png"])
    assert "generate" not in pool.calls


IMAGE = (ImageInput(offset=0, length=2, content_hash="h"),)


@pytest.mark.parametrize("stage", ["prefill", "colocated"])
async def test_embeddings_lost_with_their_vision_replica_are_encoded_again(stage):
    """The prefill (or colocated) replica cannot fetch the embeddings (their owner, the vision
    replica, died): the images are encoded again and the request streams undisturbed."""
    vision, decode = FakePool(), FakePool()
    if stage == "prefill":
        pool = FakePool(prefill=[Fault(after=0, error=OwnerDiedError)])
        orch = Orchestrator({"s": SitePools(prefill=pool, decode=decode, vision=vision)})
    else:
        pool = FakePool(generate=[Fault(after=0, error=OwnerDiedError)])
        orch = colocated(pool, vision)
    assert_one_uninterrupted_stream(await stream(orch, request(images=IMAGE), images=[b"png"]))
    assert len(vision.calls["encode"]) == 2


async def test_a_decode_migrated_after_its_embeddings_died_encodes_them_again():
    """A decode replica lost mid-stream, and the re-prefill of the resumed request finds the
    embeddings gone too: encoded again, prefilled, decoded on without a seam."""
    vision = FakePool()
    prefill = FakePool(prefill=[None, Fault(after=0, error=OwnerDiedError)])
    decode = FakePool(decode=[Fault(after=3)])
    orch = Orchestrator({"s": SitePools(prefill=prefill, decode=decode, vision=vision)})
    assert_one_uninterrupted_stream(await stream(orch, request(images=IMAGE), images=[b"png"]))
    assert len(vision.calls["encode"]) == 2 and len(prefill.calls["prefill"]) == 3


async def test_embeddings_lost_every_time_fail_after_max_attempts():
    vision, pool = FakePool(), FakePool(generate=[Fault(after=0, error=OwnerDiedError)] * MAX_ATTEMPTS)
    with pytest.raises(OwnerDiedError):
        await stream(colocated(pool, vision), request(images=IMAGE), images=[b"png"])
    assert len(vision.calls["encode"]) == MAX_ATTEMPTS


# -- site losses --------------------------------------------------------------------------------------
class Clock:
    """The orchestrator's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Unplaced:
    """A Serve response whose call no replica ever takes (its pool's site is gone): Serve would
    hold it until a replica is placed. Records whether it was cancelled."""

    def __init__(self) -> None:
        self.cancelled = False

    async def _fetch_future_result_async(self) -> None:
        await asyncio.Event().wait()

    def cancel(self) -> None:
        self.cancelled = True


class PlacedLater:
    """A Serve response that a replica takes after `delay_s` (a pool starting a replica), then
    answers with `inner` (a coroutine or an async iterator)."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    async def _fetch_future_result_async(self) -> None:
        await asyncio.sleep(self.delay_s)

    def __await__(self):
        return self.inner.__await__()

    def __aiter__(self):
        return self.inner.__aiter__()

    def cancel(self) -> None:
        raise AssertionError("a call that was placed must not be cancelled")


class GonePool(FakePool):
    """A pool at a lost site: every call is left unplaced (`Unplaced`)."""

    def __init__(self) -> None:
        super().__init__()
        self.unplaced: list[Unplaced] = []

    def _unplaced(self, method: str):
        def remote(*args: Any) -> Unplaced:
            self.calls.setdefault(method, []).append(args)
            self.unplaced.append(Unplaced())
            return self.unplaced[-1]

        return _Remote(remote)

    @property
    def prefill(self) -> _Remote:
        return self._unplaced("prefill")

    @property
    def generate(self) -> _Remote:
        return self._unplaced("generate")


def two_sites(s: SitePools, t: SitePools, clock: Clock | None = None) -> Orchestrator:
    return Orchestrator({"s": s, "t": t}, clock=clock or Clock())


def pd(prefill: FakePool | None = None, decode: FakePool | None = None, vision: FakePool | None = None) -> SitePools:
    return SitePools(prefill=prefill or FakePool(), decode=decode or FakePool(), vision=vision)


async def test_a_request_whose_site_is_lost_before_it_streamed_is_retried_on_the_other_site():
    s, t = pd(prefill=FakePool(prefill=[Fault(after=0)])), pd()
    orch = two_sites(s, t)
    chunks = await stream(orch)
    assert_one_uninterrupted_stream(chunks)
    assert len(s.prefill.calls["prefill"]) == 1 and "decode" not in s.decode.calls
    [(again,)] = t.prefill.calls["prefill"]
    assert again.resume_token_ids == ()
    assert "s" in orch.losses and "t" not in orch.losses


async def test_the_caller_is_told_each_site_a_request_runs_at():
    """The ingress records a request at the site where it ended, not where it was sent."""
    orch = two_sites(pd(prefill=FakePool(prefill=[Fault(after=0)])), pd())
    sites: list[str] = []
    chunks = [c async for c in orch.generate(request(), [], "s", on_site=sites.append)]
    assert_one_uninterrupted_stream(chunks)
    assert sites == ["s", "t"]


@pytest.mark.parametrize("k", [0, 1, 6])
async def test_a_stream_whose_site_dies_under_its_decode_resumes_on_the_other_site(k):
    """Even a decode lost before it streamed is not retried from the old site's KV: that KV
    went with the site."""
    s, t = pd(decode=FakePool(decode=[Fault(after=k)])), pd()
    chunks = await stream(two_sites(s, t))
    assert_one_uninterrupted_stream(chunks)
    [(resumed,)] = t.prefill.calls["prefill"]
    assert resumed.resume_token_ids == tuple(undisturbed()[: 1 + k])
    assert [c.stage for c in chunks] == ["prefill"] + ["decode"] * k + ["prefill"] + ["decode"] * (MAX_TOKENS - k - 2)
    assert len(t.decode.calls["decode"]) == 1
    assert len(s.decode.calls["decode"]) == 1  # never tried again at s


async def test_a_colocated_stream_moves_to_the_other_site_with_what_the_client_has():
    s, t = SitePools(colocated=FakePool(generate=[Fault(after=4)])), SitePools(colocated=FakePool())
    chunks = await stream(two_sites(s, t))
    assert_one_uninterrupted_stream(chunks)
    [(resumed,)] = t.colocated.calls["generate"]
    assert resumed.resume_token_ids == tuple(undisturbed()[:4])


async def test_a_lost_site_gets_no_request_until_its_loss_is_forgotten_then_serves_again():
    clock = Clock()
    s, t = pd(prefill=FakePool(prefill=[Fault(after=0)])), pd()
    orch = two_sites(s, t, clock)
    await stream(orch, request("first"))
    clock.now += site_router.SITE_LOSS_MEMORY_S - 1
    assert_one_uninterrupted_stream(await stream(orch, request("bound-for-s")))
    assert len(s.prefill.calls["prefill"]) == 1  # rerouted to t without a try at s
    clock.now += 2
    assert_one_uninterrupted_stream(await stream(orch, request("later")))
    assert len(s.prefill.calls["prefill"]) == 2 and "s" not in orch.losses  # tried again, answered: the loss is over


async def test_only_an_answer_to_a_call_made_after_the_loss_ends_it():
    """A stream that began at s before s lost a replica still streams from the replica that
    serves it; that says nothing of the pool since, so s stays lost."""
    clock = Clock()
    s = SitePools(colocated=FakePool(generate=[None, Fault(after=0)]))
    orch = two_sites(s, SitePools(colocated=FakePool()), clock)
    early = orch.generate(request("early"), [], "s")
    got = [await anext(early)]
    clock.now += 1
    assert_one_uninterrupted_stream(await stream(orch, request("lost-at-s")))
    assert "s" in orch.losses
    clock.now += 1
    got += [c async for c in early]
    assert tokens_of(got) == undisturbed() and "s" in orch.losses


async def test_a_pool_that_takes_no_call_is_left_for_the_other_site(monkeypatch):
    monkeypatch.setattr(orchestrator, "PLACEMENT_TIMEOUT_S", 0.01)
    gone = GonePool()
    t = pd()
    orch = two_sites(pd(prefill=gone), t)
    assert_one_uninterrupted_stream(await stream(orch))
    assert [u.cancelled for u in gone.unplaced] == [True]  # nothing waits on in Serve's queue
    assert "PoolUnreachable" in orch.losses["s"].cause and len(t.prefill.calls["prefill"]) == 1


async def test_with_no_other_site_a_call_waits_for_its_replica_however_long(monkeypatch):
    """One site: nowhere else to go, so a pool starting a replica is waited for, as before."""
    monkeypatch.setattr(orchestrator, "PLACEMENT_TIMEOUT_S", 0.01)
    pool = FakePool()
    slow = SimpleNamespace(remote=lambda req: PlacedLater(pool._generate(req), delay_s=0.05))
    orch = Orchestrator({"s": SitePools(colocated=SimpleNamespace(options=lambda stream: SimpleNamespace(generate=slow)))})
    assert_one_uninterrupted_stream(await stream(orch))
    assert orch.losses == {}


async def test_when_every_site_is_lost_the_request_stays_and_fails_after_max_attempts():
    s = pd(prefill=FakePool(prefill=[Fault(after=0)] * MAX_ATTEMPTS))
    t = pd(prefill=FakePool(prefill=[Fault(after=0)] * MAX_ATTEMPTS))
    with pytest.raises(ActorDiedError):
        await stream(two_sites(s, t))
    # s, then t, then every site is lost: the request stays at t for its last try.
    assert len(s.prefill.calls["prefill"]) == 1 and len(t.prefill.calls["prefill"]) == MAX_ATTEMPTS - 1


async def test_an_image_request_moved_to_another_site_is_encoded_again_there():
    s = pd(prefill=FakePool(prefill=[Fault(after=0)]), vision=FakePool())
    t = pd(vision=FakePool())
    req = request(images=(ImageInput(offset=0, length=2, content_hash="h"),))
    assert_one_uninterrupted_stream(await stream(two_sites(s, t), req, images=[b"png"]))
    assert len(s.vision.calls["encode"]) == 1 and len(t.vision.calls["encode"]) == 1
    [(sent,)] = t.prefill.calls["prefill"]
    assert sent.images[0].embeds_ref == "embeds-of-0"
