"""The asyncio front: concurrent streams share batches, leaving a stream aborts, limits hold."""

from __future__ import annotations

import asyncio

import pytest

from workers.engine.async_engine import AsyncEngine, EngineOverloaded
from workers.engine.config import EngineConfig
from workers.engine.llm_engine import LLMEngine
from workers.engine.sampling import SamplingParams

PARAMS = SamplingParams(max_tokens=10, ignore_eos=True)


def prompts(n):
    return [list(range(3, 8 + i)) for i in range(n)]


async def collect(engine: AsyncEngine, rid, prompt, params=PARAMS):
    outs = [o async for o in engine.generate(rid, prompt, params)]
    return [t for o in outs for t in o.new_token_ids], outs[-1].finish_reason


async def test_concurrent_streams_match_the_offline_engine(tiny_llama_dir):
    expected = LLMEngine(tiny_llama_dir).generate(prompts(12), PARAMS)
    engine = AsyncEngine(LLMEngine(tiny_llama_dir, EngineConfig(chunk_size=32)))
    results = await asyncio.gather(*(collect(engine, f"r{i}", p) for i, p in enumerate(prompts(12))))
    assert [tokens for tokens, _ in results] == expected
    assert {reason for _, reason in results} == {"length"}
    stats = engine.stats()
    assert stats.running == 0 and stats.free_kv_blocks == stats.total_kv_blocks
    assert stats.tokens_per_s > 0 and 0 < stats.busy_fraction <= 1
    await engine.shutdown()


async def test_leaving_a_stream_early_aborts_the_request(tiny_llama_dir):
    inner = LLMEngine(tiny_llama_dir)
    engine = AsyncEngine(inner)
    stream = engine.generate("long", [5, 6, 7], SamplingParams(max_tokens=500, ignore_eos=True))
    async for _ in stream:
        break
    await stream.aclose()
    for _ in range(100):
        if not inner.has_unfinished():
            break
        await asyncio.sleep(0.01)
    assert not inner.has_unfinished()
    assert engine.num_active == 0
    assert inner.num_free_blocks == inner.block_manager.num_blocks
    tokens, _ = await collect(engine, "after", [5, 6, 7])
    assert len(tokens) == 10
    await engine.shutdown()


async def test_bad_input_fails_only_its_caller(tiny_llama_dir):
    engine = AsyncEngine(LLMEngine(tiny_llama_dir))
    good = asyncio.create_task(collect(engine, "good", [5, 6, 7]))
    with pytest.raises(ValueError, match="prompt"):
        await collect(engine, "bad", [])
    with pytest.raises(ValueError, match="max_tokens"):
        await collect(engine, "bad2", [1], SamplingParams(max_tokens=0))
    tokens, _ = await good
    assert len(tokens) == 10
    await engine.shutdown()


async def test_back_pressure_rejects_beyond_the_queue_limit(tiny_llama_dir):
    engine = AsyncEngine(LLMEngine(tiny_llama_dir, EngineConfig(max_queued_requests=2)))
    streams = [engine.generate(f"r{i}", [5, 6], SamplingParams(max_tokens=50, ignore_eos=True)) for i in range(2)]
    firsts = [await s.__anext__() for s in streams]
    assert all(not f.finished for f in firsts)
    with pytest.raises(EngineOverloaded):
        await collect(engine, "third", [5, 6])
    for s in streams:
        await s.aclose()
    await engine.shutdown()
