"""The TBT-bound token budget: fitted from steps, within the target's margin, bounded both ways."""

from __future__ import annotations

import pytest

from workers.engine.step_rates import Step
from workers.engine.token_budget import MARGIN, MIN_PREFILL_TOKENS, MIN_STEPS, fit_step_time, token_budget


def steps_of(fixed: float, per_token: float, sizes) -> list[Step]:
    return [Step(fixed + per_token * n, n - 4, 4) for n in sizes]


def test_only_steps_with_prompt_tokens_are_fitted():
    decode_only = [Step(0.5, 0, n) for n in range(1, 30)]
    assert fit_step_time(decode_only) is None  # no step the budget shapes
    mixed = steps_of(0.02, 0.001, [20, 60, 100, 140, 180, 220, 256, 256]) + decode_only
    assert fit_step_time(mixed) == pytest.approx((0.02, 0.001))


def test_the_fit_recovers_a_linear_step_time():
    fixed, per_token = fit_step_time(steps_of(0.02, 0.001, [20, 60, 100, 140, 180, 220, 256, 256, 64]))
    assert fixed == pytest.approx(0.02) and per_token == pytest.approx(0.001)


def test_the_budget_ends_a_step_within_the_margin_of_the_target():
    steps = steps_of(0.02, 0.001, [20, 60, 100, 140, 180, 220, 256, 256])
    budget = token_budget(steps, tbt_target_s=0.2, chunk_size=256, running_decodes=4)
    assert 0.02 + 0.001 * budget <= MARGIN * 0.2 + 1e-9 < 0.02 + 0.001 * (budget + 1)
    assert token_budget(steps, tbt_target_s=5.0, chunk_size=256, running_decodes=4) == 256  # never above the chunk size


def test_prefills_always_move_and_steps_of_one_size_still_bound_the_budget():
    slow = steps_of(0.5, 0.01, [20, 60, 100, 140, 180, 220, 256, 256])
    assert token_budget(slow, tbt_target_s=0.1, chunk_size=256, running_decodes=30) == 30 + MIN_PREFILL_TOKENS
    assert token_budget(slow[: MIN_STEPS - 1], tbt_target_s=0.1, chunk_size=256, running_decodes=1) is None
    same_size = steps_of(0.02, 0.001, [64] * 20)
    assert fit_step_time(same_size) == pytest.approx((0.0, 0.084 / 64))  # all of it charged per token
    assert token_budget(same_size, tbt_target_s=0.0845 / MARGIN, chunk_size=256, running_decodes=1) == 64


async def test_an_engine_with_a_tbt_target_shrinks_its_budget_and_keeps_its_tokens(tiny_llama_dir):
    """A target no step can meet drives the budget to its floor; greedy output is the same."""
    import asyncio

    from workers.engine.async_engine import AsyncEngine
    from workers.engine.config import EngineConfig
    from workers.engine.llm_engine import LLMEngine
    from workers.engine.sampling import SamplingParams

    async def run(target: float | None) -> tuple[list[list[int]], int]:
        engine = AsyncEngine(LLMEngine(str(tiny_llama_dir), EngineConfig(chunk_size=64, num_threads=1, tbt_target_s=target)))
        params = SamplingParams(max_tokens=8, ignore_eos=True)

        async def one(i: int) -> list[int]:
            prompt = [1 + (i * 7 + k) % 300 for k in range(40 + 13 * i)]
            return [t async for out in engine.generate(f"r{i}", prompt, params) for t in out.new_token_ids]

        outputs = await asyncio.gather(*(one(i) for i in range(12)))
        budget = engine.engine.scheduler.token_budget
        await engine.shutdown()
        return list(outputs), budget

    free, free_budget = await run(None)
    bound, bound_budget = await run(1e-6)
    assert free_budget == 64 and bound_budget < 64
    assert bound == free
