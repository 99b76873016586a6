"""Unit tests of `n` > 1 (router/choices.py, no Ray): the copies' ids and seeds, and the fan-out
that starts copy 0 first and the others once it has streamed."""

from __future__ import annotations

import asyncio

import pytest

from router.admission import ClassPolicy
from router.choices import copies, fan_out
from router.priority import class_for_priority
from workers.engine.sampling import SamplingParams
from workers.requests import GenerateRequest, TokenChunk


def request(**params) -> GenerateRequest:
    return GenerateRequest(request_id="r", prompt_token_ids=[1, 2, 3], params=SamplingParams(max_tokens=4, **params))


def test_copies_get_their_own_ids_and_consecutive_seeds():
    assert copies(request(seed=5), 1) == [request(seed=5)]
    made = copies(request(seed=5, temperature=1.0), 3)
    assert [r.request_id for r in made] == ["r-0", "r-1", "r-2"] and [r.params.seed for r in made] == [5, 6, 7]
    assert [r.params.seed for r in copies(request(temperature=1.0), 2)] == [None, None]


def test_only_copy_0_reports_the_prompts_logprobs():
    made = copies(request(logprobs=1, prompt_logprobs=1), 3)
    assert [r.params.prompt_logprobs for r in made] == [1, None, None] and {r.params.logprobs for r in made} == {1}


def chunk(i: int, text: str, finished: bool = False) -> TokenChunk:
    return TokenChunk(f"r-{i}", [7], text, finished=finished, finish_reason="length" if finished else None)


def test_copy_0_streams_before_the_others_start():
    started: list[tuple[int, int]] = []  # (copy, chunks of copy 0 seen by then)
    seen_from_0 = 0

    def start(i: int):
        async def stream():
            nonlocal seen_from_0
            started.append((i, seen_from_0))
            for k in range(3):
                await asyncio.sleep(0.001)
                if i == 0:
                    seen_from_0 += 1
                yield chunk(i, f"{i}.{k}", finished=k == 2)

        return stream()

    async def main():
        return [item async for item in fan_out(start, 3)]

    items = asyncio.run(main())
    assert started[0] == (0, 0) and all(seen >= 1 for i, seen in started[1:])
    by_choice = {i: [c.text for j, c in items if j == i] for i in range(3)}
    assert by_choice == {i: [f"{i}.0", f"{i}.1", f"{i}.2"] for i in range(3)}


def test_an_error_in_one_copy_ends_all_and_closing_cancels_the_rest():
    closed: list[int] = []

    def start(i: int):
        async def stream():
            try:
                yield chunk(i, "a")
                if i == 1:
                    raise ValueError("n: copy 1 failed")
                await asyncio.sleep(10)
                yield chunk(i, "never", finished=True)
            finally:
                closed.append(i)

        return stream()

    async def main():
        seen = []
        with pytest.raises(ValueError, match="copy 1 failed"):
            async for item in fan_out(start, 3):
                seen.append(item[0])
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), 5))
    assert 0 in seen and sorted(closed) == [0, 1, 2]


def test_priority_demotes_onto_the_classes_and_never_promotes():
    policies = {p.name: p for p in (ClassPolicy("interactive", 0), ClassPolicy("standard", 1), ClassPolicy("batch", 2))}
    assert class_for_priority("interactive", None, policies) == "interactive"
    assert [class_for_priority("interactive", p, policies) for p in (-5, 0, 1, 2, 9)] == ["interactive", "interactive", "standard", "batch", "batch"]
    assert [class_for_priority("batch", p, policies) for p in (0, 1, 2)] == ["batch"] * 3
    assert class_for_priority("standard", 2, policies) == "batch"
