"""Engine behaviour beyond greedy exactness: sampling, stopping, aborting, bad input."""

from __future__ import annotations

import pytest
import torch

from workers.engine.config import EngineConfig
from workers.engine.llm_engine import LLMEngine
from workers.engine.sampling import SamplingParams


@pytest.fixture(scope="module")
def engine(tiny_llama_dir):
    return LLMEngine(tiny_llama_dir, EngineConfig(chunk_size=32, num_kv_blocks=128))


def prompt(n: int, seed: int = 0) -> list[int]:
    return torch.randint(3, 384, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_seeded_sampling_is_reproducible_across_engines_batches_and_preemption(tiny_llama_dir):
    params = SamplingParams(max_tokens=20, temperature=0.9, top_k=50, top_p=0.9, seed=7, ignore_eos=True)
    alone = LLMEngine(tiny_llama_dir, EngineConfig()).generate([prompt(30)], params)[0]
    crowded = LLMEngine(tiny_llama_dir, EngineConfig(chunk_size=16, num_kv_blocks=12))
    others = [prompt(60, seed=s) for s in range(1, 6)]
    outs = crowded.generate([*others, prompt(30)], [SamplingParams(max_tokens=20, ignore_eos=True)] * 5 + [params])
    assert crowded.scheduler.num_preemptions > 0
    assert outs[-1] == alone
    different_seed = LLMEngine(tiny_llama_dir, EngineConfig()).generate(
        [prompt(30)], SamplingParams(max_tokens=20, temperature=0.9, seed=8, ignore_eos=True)
    )[0]
    assert different_seed != alone


def test_sampling_respects_top_k(engine):
    greedy = engine.generate([prompt(12)], SamplingParams(max_tokens=8, ignore_eos=True))[0]
    top1 = engine.generate([prompt(12)], SamplingParams(max_tokens=8, temperature=5.0, top_k=1, seed=3, ignore_eos=True))[0]
    assert top1 == greedy  # top-k 1 is greedy whatever the temperature


def test_stop_token_ids_end_the_request_with_reason_stop(engine):
    full = engine.generate([prompt(10)], SamplingParams(max_tokens=12, ignore_eos=True))[0]
    stop_at = full[5]
    first = full.index(stop_at)
    engine.add_request("stop", prompt(10), SamplingParams(max_tokens=12, stop_token_ids=(stop_at,), ignore_eos=True))
    outs = []
    while engine.has_unfinished():
        outs.extend(engine.step())
    assert [t for o in outs for t in o.new_token_ids] == full[: first + 1]
    assert outs[-1].finish_reason == "stop"


def test_max_tokens_ends_with_reason_length(engine):
    engine.add_request("len", prompt(10), SamplingParams(max_tokens=3, ignore_eos=True))
    outs = []
    while engine.has_unfinished():
        outs.extend(engine.step())
    assert len(outs) == 3 and outs[-1].finished and outs[-1].finish_reason == "length"


def test_abort_frees_every_block_and_others_continue(engine):
    engine.add_request("keep", prompt(40, 1), SamplingParams(max_tokens=6, ignore_eos=True))
    engine.add_request("drop", prompt(40, 2), SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    assert engine.abort("drop")
    assert not engine.abort("drop")
    finished = []
    while engine.has_unfinished():
        finished += [o.request_id for o in engine.step() if o.finished]
    assert finished == ["keep"]
    assert engine.num_free_blocks == engine.block_manager.num_blocks


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_tokens=-3), "max_tokens"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(stop=("",)), "stop"),
    ],
)
def test_bad_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_bad_prompts_are_rejected_and_the_engine_keeps_serving(engine):
    with pytest.raises(ValueError, match="prompt"):
        engine.add_request("empty", [])
    with pytest.raises(ValueError, match="prompt"):
        engine.add_request("long", [5] * engine.max_model_len)
    with pytest.raises(ValueError, match="prompt"):
        engine.add_request("vocab", [5, 10_000])
    assert not engine.has_unfinished()
    assert engine.generate([prompt(8)], SamplingParams(max_tokens=4, ignore_eos=True))[0]


def test_unknown_policy_and_mode_are_rejected():
    with pytest.raises(ValueError, match="policy"):
        EngineConfig(policy="round_robin")
    with pytest.raises(ValueError, match="mode"):
        EngineConfig(mode="both")
    with pytest.raises(ValueError, match="chunk_size"):
        EngineConfig(chunk_size=0)


def test_max_model_len_is_capped_by_the_kv_cache(tiny_llama_dir):
    engine = LLMEngine(tiny_llama_dir, EngineConfig(num_kv_blocks=4, block_size=16))
    assert engine.max_model_len == 64
    out = engine.generate([prompt(60)], SamplingParams(max_tokens=50, ignore_eos=True))[0]
    assert len(out) == 4  # stops at the context length, with reason "length"
