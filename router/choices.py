"""`n` > 1: one engine request per choice, streamed back as (choice index, chunk) pairs.

Each choice is a copy of the request with its own id (`<id>-<i>`) and, when the client gave
a `seed`, the seed `seed + i`: copies must differ (the same seed would draw the same tokens)
and a request sent again with the same seed must get the same choices back. Without a seed,
each copy draws its own random stream; greedy copies are identical, as with OpenAI. Prompt
logprobs (completions' `echo` with `logprobs`) are asked of copy 0 alone: the prompt is the
same for every copy, and a copy that must report them cannot skip its cached prefix.

Copy 0 goes first, the others once its first token has arrived: by then its prompt's KV
blocks are in the prefix cache of the replica that prefilled it, and the copies, which carry
the same prefix hashes, are routed there (`router/replica_choice.py`) and prefill only what
is not cached — the prompt is computed once, not `n` times.

Pure asyncio: the ingress passes how to start one copy's stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

from workers.requests import GenerateRequest, TokenChunk

MAX_CHOICES = 128  # OpenAI's limit for `n`

_END = object()


def copies(request: GenerateRequest, n: int) -> list[GenerateRequest]:
    """The engine requests of `n` choices (the request itself when n is 1)."""
    if n == 1:
        return [request]
    params = request.params
    out = []
    for i in range(n):
        changes: dict = {}
        if params.seed is not None:
            changes["seed"] = params.seed + i
        if i > 0 and params.prompt_logprobs is not None:
            changes["prompt_logprobs"] = None  # the prompt is the same: copy 0 reports it for all
        copy_params = dataclasses.replace(params, **changes) if changes else params
        out.append(dataclasses.replace(request, request_id=f"{request.request_id}-{i}", params=copy_params))
    return out


async def fan_out(start: Callable[[int], AsyncIterator[TokenChunk]], n: int) -> AsyncIterator[tuple[int, TokenChunk]]:
    """Every chunk of `n` streams as (index, chunk), in the order they arrive. Copy 0 starts
    first, the rest once copy 0 yields (or ends). The first error of any copy ends it all;
    closing this generator cancels every copy still running."""
    if n == 1:
        stream = start(0)
        try:
            async for chunk in stream:
                yield 0, chunk
        finally:
            await stream.aclose()
        return
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
    tasks: list[asyncio.Task[None]] = []

    def launch(index: int) -> None:
        tasks.append(asyncio.create_task(_pump(index, start, queue), name=f"choice-{index}"))

    launch(0)
    running, others_started = n, False
    try:
        while running:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if not others_started and index == 0:
                others_started = True
                for i in range(1, n):
                    launch(i)
            if item is _END:
                running -= 1
                continue
            yield index, item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _pump(index: int, start: Callable[[int], AsyncIterator[TokenChunk]], queue: asyncio.Queue) -> None:
    stream = start(index)
    try:
        async for chunk in stream:
            await queue.put((index, chunk))
        await queue.put((index, _END))
    except Exception as exc:
        await queue.put((index, exc))
    finally:
        await stream.aclose()
