"""The traffic of `pavana bench chaos`: greedy streams of fixed prompts whose answers are known
before the first fault, so that every stream can be checked token for token.

A client that behaves well: a 429 or 503 that carries `Retry-After` is retried after that
delay (capped at `RETRY_AFTER_CAP_S`), at most `MAX_CLIENT_RETRIES` times, and each retry is
counted. Each request ends in exactly one of three outcomes (`verdict`, pure):

- failed: no 200 in the end — an HTTP error other than a retried 429/503, a transport error,
  or no answer at all within `NEVER_ENDED_S`;
- broken: a 200 stream that ended without its final chunk (a `finish_reason`) or without
  `[DONE]`, carried an error event, delivered a number of tokens other than asked for, whose
  text differs from the non-streamed greedy answer to the same prompt (a repeated or skipped
  token shows as a difference), or that went `STALL_S` without a chunk or `NEVER_ENDED_S` in
  all (hung);
- ok: everything else.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from bench.client import chunk_text

OK, FAILED, BROKEN = "ok", "failed", "broken"
MAX_CLIENT_RETRIES = 8
RETRY_AFTER_CAP_S = 5.0
STALL_S = 90.0  # a stream silent this long is hung
NEVER_ENDED_S = 300.0  # a request not over after this long never ended


@dataclass(frozen=True, slots=True)
class FixedPrompt:
    """One prompt of the run and its undisturbed greedy answer."""

    index: int
    path: str  # "/completions" or "/chat/completions"
    body: dict[str, Any]  # without "stream"
    max_tokens: int
    reference: str = ""

    def streamed_body(self) -> dict[str, Any]:
        return {**self.body, "stream": True, "stream_options": {"include_usage": True}}


def completion_prompt(index: int, model: str, text: str, max_tokens: int) -> FixedPrompt:
    """A greedy text completion of exactly `max_tokens` tokens."""
    body = {"model": model, "prompt": text, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    return FixedPrompt(index, "/completions", body, max_tokens)


def image_prompt(index: int, model: str, text: str, image_url: str, max_tokens: int) -> FixedPrompt:
    """A greedy chat completion about one image (a `data:` URL): it crosses the vision pool."""
    content = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": text}]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    return FixedPrompt(index, "/chat/completions", body, max_tokens)


@dataclass(slots=True)
class StreamRecord:
    """What the client saw of one request (times in seconds from the start of traffic)."""

    index: int
    prompt: int
    sent_s: float
    status: int | None = None
    retries: int = 0
    text: str = ""
    chunks: int = 0
    finish_reason: str | None = None
    done: bool = False
    usage_tokens: int | None = None
    error: str | None = None
    hung: bool = False
    ended_s: float | None = None
    outcome: str = ""
    why: str = ""

    def summary(self) -> dict[str, Any]:
        kept = asdict(self)
        kept.pop("text")
        return kept


def answer_text(payload: dict[str, Any]) -> str:
    """The text of a non-streamed completion or chat completion."""
    choice = payload["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def verdict(record: StreamRecord, prompt: FixedPrompt) -> tuple[str, str]:
    """The outcome of one request and why (see the module's docstring)."""
    if record.status != 200:
        if record.status is None:
            return FAILED, record.error or "no answer"
        return FAILED, f"HTTP {record.status}: {record.error or ''}"[:300]
    if record.hung:
        return BROKEN, "hung: " + (record.error or "")
    if record.error:
        return BROKEN, f"error event: {record.error}"[:300]
    if record.finish_reason is None:
        return BROKEN, "ended without its final chunk"
    if not record.done:
        return BROKEN, "ended without [DONE]"
    if record.usage_tokens != prompt.max_tokens:
        return BROKEN, f"{record.usage_tokens} tokens of {prompt.max_tokens}"
    if record.text != prompt.reference:
        at = first_difference(record.text, prompt.reference)
        return BROKEN, f"text differs from the undisturbed answer at character {at}: {record.text[at:at + 30]!r} vs {prompt.reference[at:at + 30]!r}"
    return OK, ""


def retry_after_s(response: httpx.Response) -> float | None:
    """The delay a 429 or 503 asks for, or `None` when the answer is not one to retry."""
    if response.status_code not in (429, 503):
        return None
    try:
        return min(RETRY_AFTER_CAP_S, max(0.0, float(response.headers["retry-after"])))
    except (KeyError, ValueError):
        return None


async def _read_stream(response: httpx.Response, record: StreamRecord) -> None:
    lines = response.aiter_lines()
    while True:
        try:
            line = await asyncio.wait_for(anext(lines), STALL_S)
        except StopAsyncIteration:
            return
        except TimeoutError:
            record.hung, record.error = True, f"no chunk for {STALL_S:.0f} s"
            return
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            record.done = True
            return
        payload = json.loads(data)
        if "error" in payload:
            record.error = json.dumps(payload["error"])[:300]
            continue
        if payload.get("usage"):
            record.usage_tokens = payload["usage"].get("completion_tokens")
        text = chunk_text(payload)
        if text:
            record.text += text
            record.chunks += 1
        choices = payload.get("choices") or []
        if choices and choices[0].get("finish_reason"):
            record.finish_reason = choices[0]["finish_reason"]


async def stream_one(client: httpx.AsyncClient, prompt: FixedPrompt, record: StreamRecord, clock: Callable[[], float]) -> StreamRecord:
    """Send one request, retrying refusals that ask for it; fill `record` and its verdict."""
    try:
        async with asyncio.timeout(NEVER_ENDED_S):
            while True:
                async with client.stream("POST", prompt.path.lstrip("/"), json=prompt.streamed_body()) as response:
                    delay = retry_after_s(response)
                    if delay is not None and record.retries < MAX_CLIENT_RETRIES:
                        record.retries += 1
                        await response.aread()
                        await asyncio.sleep(delay)
                        continue
                    record.status = response.status_code
                    if response.status_code != 200:
                        record.error = (await response.aread()).decode("utf-8", "replace")[:300]
                        break
                    await _read_stream(response, record)
                    break
    except TimeoutError:
        record.hung, record.error = True, f"not over after {NEVER_ENDED_S:.0f} s"
    except (httpx.HTTPError, json.JSONDecodeError) as exc:  # before the answer: failed; inside a stream: broken
        record.error = f"{type(exc).__name__}: {exc}"[:300]
    record.ended_s = clock()
    record.outcome, record.why = verdict(record, prompt)
    return record


def http_client(base_url: str, api_key: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    timeout = httpx.Timeout(connect=30.0, read=NEVER_ENDED_S, write=30.0, pool=None)
    return httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", headers={"Authorization": f"Bearer {api_key}"}, limits=limits, timeout=timeout)


async def references(client: httpx.AsyncClient, prompts: list[FixedPrompt], concurrency: int = 2) -> list[FixedPrompt]:
    """Each prompt with its non-streamed greedy answer, asked before any fault."""
    gate = asyncio.Semaphore(concurrency)

    async def one(prompt: FixedPrompt) -> FixedPrompt:
        async with gate:
            response = await client.post(prompt.path.lstrip("/"), json={**prompt.body, "stream": False})
        response.raise_for_status()
        return FixedPrompt(prompt.index, prompt.path, prompt.body, prompt.max_tokens, answer_text(response.json()))

    return list(await asyncio.gather(*(one(p) for p in prompts)))


@dataclass
class Traffic:
    """Open-loop Poisson traffic at `rate_rps` over `prompts`, drawn by a seeded generator,
    from `start()` until `stop()`; every request runs as its own task."""

    client: httpx.AsyncClient
    prompts: list[FixedPrompt]
    rate_rps: float
    seed: int
    records: list[StreamRecord] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def clock(self) -> float:
        return time.monotonic() - self.started

    async def run(self) -> list[StreamRecord]:
        """Dispatch until stopped, then wait for every request to end (each is bounded)."""
        rng = random.Random(self.seed)
        next_at = rng.expovariate(self.rate_rps)
        while not self._stopped.is_set():
            try:
                await asyncio.wait_for(self._stopped.wait(), max(0.0, next_at - self.clock()))
                break
            except TimeoutError:
                pass
            prompt = rng.choice(self.prompts)
            record = StreamRecord(len(self.records), prompt.index, self.clock())
            self.records.append(record)
            self._tasks.append(asyncio.create_task(stream_one(self.client, prompt, record, self.clock)))
            next_at += rng.expovariate(self.rate_rps)
        await asyncio.gather(*self._tasks)
        return self.records

    def stop(self) -> None:
        self._stopped.set()

    def in_flight(self) -> int:
        return sum(1 for t in self._tasks if not t.done())
