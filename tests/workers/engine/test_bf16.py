"""The engine in bfloat16 against `transformers` in bfloat16, by log-probabilities.

bfloat16 keeps 8 bits of mantissa, so two correct implementations that round in a different
order disagree in the last bits of every product and a near-tie between tokens can flip:
token-exact agreement is float32's promise (test_engine_reference.py), not bfloat16's. What
must hold is that the engine computes the same distribution: every log-probability of the
tokens it chose, over prompts and outputs alike (prefill chunks, and decodes over the
per-sequence KV regions), within TOLERANCE of `transformers`' own bfloat16 forward pass.
"""

from __future__ import annotations

import pytest
import torch
from engine_runs import run, tokens_of
from tiny_checkpoints import build_tiny_llama

from workers.engine.config import EngineConfig
from workers.engine.llm_engine import LLMEngine
from workers.engine.sampling import SamplingParams

# Natural-log units. bfloat16's relative step is 2^-8; the engine and `transformers` run the same
# products in the same order on this tiny model, so they differ far less (about 2e-5 here).
TOLERANCE = 0.01
PROMPT_LENGTHS = (3, 17, 40, 90)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("bf16"), seed=3)


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16).eval()


def reference_logprobs(hf_model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return hf_model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


@pytest.mark.parametrize("chunk_size", [16, 512])
def test_bf16_logprobs_match_transformers_in_bf16(checkpoint, hf_model, chunk_size):
    engine = LLMEngine(checkpoint, EngineConfig(chunk_size=chunk_size, dtype="bfloat16"))
    assert engine.runner.model.embed_tokens.weight.dtype == torch.bfloat16
    g = torch.Generator().manual_seed(7)
    prompts = {f"r{n}": torch.randint(3, 384, (n,), generator=g).tolist() for n in PROMPT_LENGTHS}
    params = SamplingParams(max_tokens=12, logprobs=1, prompt_logprobs=1, ignore_eos=True)
    outs = run(engine, {rid: (p, params) for rid, p in prompts.items()})
    worst = 0.0
    for rid, p in prompts.items():
        ids = p + tokens_of(outs[rid])
        reference = reference_logprobs(hf_model, ids)
        records = [r for r in outs[rid][0].prompt_logprobs[1:]] + [r for o in outs[rid] for r in o.logprobs]
        assert len(records) == len(ids) - 1
        for position, record in enumerate(records):
            assert record.token_id == ids[position + 1]
            worst = max(worst, abs(record.logprob - float(reference[position, record.token_id])))
    assert worst <= TOLERANCE, f"largest |logprob difference| {worst:.4f} over {TOLERANCE}"


def test_float32_stays_the_default_and_exact_path(checkpoint):
    engine = LLMEngine(checkpoint)
    assert engine.runner.model.embed_tokens.weight.dtype == torch.float32
    assert engine.runner.regions.layers[0][0].dtype == torch.float32
