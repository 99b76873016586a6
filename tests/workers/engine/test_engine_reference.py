"""Token-for-token agreement with `transformers` on tiny random Llama checkpoints.

The engine batches, chunks, preempts and hands off; none of that may change a greedy token.
The reference is `transformers`' own `generate`, one prompt at a time (no padding effects).
"""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import build_tiny_llama

from workers.engine.config import EngineConfig
from workers.engine.llm_engine import LLMEngine
from workers.engine.sampling import SamplingParams

MAX_NEW = 24
PROMPT_LENGTHS = [1, 5, 17, 33, 64, 100, 150, 250, 40, 9]


@pytest.fixture(scope="module", params=["gqa", "mha-tied"])
def checkpoint(request, tmp_path_factory):
    if request.param == "gqa":
        path = build_tiny_llama(tmp_path_factory.mktemp("gqa"), seed=1)
    else:
        path = build_tiny_llama(
            tmp_path_factory.mktemp("mha"), seed=2, num_key_value_heads=4, tie_word_embeddings=True, num_hidden_layers=3
        )
    return path


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(1234)
    return [torch.randint(3, 384, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


@pytest.fixture(scope="module")
def reference(checkpoint, prompts):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(checkpoint).eval()
    outputs = []
    for prompt in prompts:
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        outputs.append(out[0, len(prompt) :].tolist())
    return outputs


GREEDY = SamplingParams(max_tokens=MAX_NEW, ignore_eos=True)


def test_single_prompts_match(checkpoint, prompts, reference):
    engine = LLMEngine(checkpoint, EngineConfig(chunk_size=64))
    for prompt, expected in zip(prompts, reference):
        assert engine.generate([prompt], GREEDY) == [expected]


@pytest.mark.parametrize("policy", ["sarathi", "prefill_first"])
@pytest.mark.parametrize("chunk_size", [16, 64, 512])
def test_batch_of_mixed_lengths_matches(checkpoint, prompts, reference, policy, chunk_size):
    engine = LLMEngine(checkpoint, EngineConfig(policy=policy, chunk_size=chunk_size, num_kv_blocks=256))
    assert engine.generate(prompts, GREEDY) == reference
    assert engine.num_free_blocks == 256
    assert engine.scheduler.num_preemptions == 0


@pytest.mark.parametrize("policy", ["sarathi", "prefill_first"])
def test_output_survives_preemption_by_recomputation(checkpoint, prompts, reference, policy):
    # 30 blocks of 16 hold 480 tokens: far less than the batch needs at once.
    engine = LLMEngine(checkpoint, EngineConfig(policy=policy, chunk_size=64, num_kv_blocks=30))
    assert engine.generate(prompts, GREEDY) == reference
    assert engine.scheduler.num_preemptions > 0
    assert engine.num_free_blocks == 30


def test_prefix_cache_hits_do_not_change_output(checkpoint, prompts, reference):
    engine = LLMEngine(checkpoint, EngineConfig(chunk_size=64, num_kv_blocks=256))
    engine.generate(prompts, GREEDY)
    cached = len(engine.block_manager.cached_block_hashes())
    assert cached > 0
    assert engine.generate(prompts, GREEDY) == reference


@pytest.mark.parametrize("chunk_size", [16, 512])
def test_prefill_to_decode_handoff_matches_colocated(checkpoint, prompts, reference, chunk_size):
    prefill = LLMEngine(checkpoint, EngineConfig(mode="prefill", chunk_size=chunk_size))
    decode = LLMEngine(checkpoint, EngineConfig(mode="decode", chunk_size=chunk_size, num_kv_blocks=64))
    for i, prompt in enumerate(prompts):
        prefill.add_request(str(i), prompt, GREEDY)
    tokens: dict[str, list[int]] = {}
    while prefill.has_unfinished():
        for out in prefill.step():
            assert out.finished and out.handoff is not None and out.finish_reason is None
            assert out.handoff.kv.shape[2] == len(prompts[int(out.request_id)])
            tokens[out.request_id] = list(out.new_token_ids)
            decode.add_handoff(out.handoff)
    assert prefill.num_free_blocks == prefill.block_manager.num_blocks
    while decode.has_unfinished():
        for out in decode.step():
            tokens[out.request_id].extend(out.new_token_ids)
    assert [tokens[str(i)] for i in range(len(prompts))] == reference
    assert decode.num_free_blocks == 64
