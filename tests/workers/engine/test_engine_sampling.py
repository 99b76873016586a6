"""Penalties, logit bias, min_tokens and logprobs through the whole engine, against
`transformers` on a tiny random Llama: the engine's bookkeeping (which tokens are prompt, which
are output, which position a chunk predicts) must give what a plain loop over `transformers`'
logits gives, through batching, chunked prefill, preemption and the prefill→decode hand-off."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import build_tiny_llama

from workers.engine.config import EngineConfig
from workers.engine.default_model import ensure_default_model
from workers.engine.llm_engine import LLMEngine
from workers.engine.sampling import SamplingParams
from tests.workers.engine.engine_runs import run, tokens_of

EOS = 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("llama"), seed=3)


@pytest.fixture(scope="module")
def hf_model(checkpoint):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(checkpoint).eval()


def prompt(n: int, seed: int = 0) -> list[int]:
    return torch.randint(3, 384, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


# -- penalties and bias ---------------------------------------------------------------------------------
def test_repetition_penalty_equals_transformers_generate(checkpoint, hf_model):
    engine = LLMEngine(checkpoint, EngineConfig(chunk_size=16))
    prompts = [prompt(n, seed=n) for n in (5, 23, 40)]
    ours = engine.generate(prompts, SamplingParams(max_tokens=20, repetition_penalty=4.0, ignore_eos=True))
    for p, got in zip(prompts, ours):
        ref = hf_model.generate(torch.tensor([p]), max_new_tokens=20, do_sample=False, repetition_penalty=4.0, eos_token_id=None, pad_token_id=0)
        assert got == ref[0, len(p) :].tolist()
    plain = engine.generate(prompts, SamplingParams(max_tokens=20, ignore_eos=True))
    assert plain != ours  # the penalty did change something


def test_presence_frequency_and_logit_bias_equal_a_hand_loop_over_transformers_logits(checkpoint, hf_model):
    presence, frequency, bias = 1.2, 0.7, {17: 3.0, 40: -5.0}
    params = SamplingParams(max_tokens=16, presence_penalty=presence, frequency_penalty=frequency, logit_bias=bias, ignore_eos=True)
    p = prompt(30, seed=1)
    ids = list(p)
    for _ in range(16):
        x = hf_logits(hf_model, ids)[-1]
        for token, b in bias.items():
            x[token] += b
        output = ids[len(p) :]
        for token in set(output):
            x[token] -= presence + frequency * output.count(token)
        ids.append(int(x.argmax()))
    engine = LLMEngine(checkpoint, EngineConfig(chunk_size=8))  # a chunked prompt: the penalties must see only the output
    assert engine.generate([p], params)[0] == ids[len(p) :]


def test_a_bias_of_100_forces_its_token_at_every_step(checkpoint):
    engine = LLMEngine(checkpoint)
    assert engine.generate([prompt(12)], SamplingParams(max_tokens=6, logit_bias={77: 100}, ignore_eos=True))[0] == [77] * 6
    with pytest.raises(ValueError, match="logit_bias"):
        engine.add_request("x", prompt(4), SamplingParams(logit_bias={384: 1}))


def test_min_tokens_holds_off_eos_and_then_lets_it_end_the_request(checkpoint):
    engine = LLMEngine(checkpoint)
    eager = SamplingParams(max_tokens=20, logit_bias={EOS: 40})  # EOS is by far the likeliest token
    out = run(engine, {"now": (prompt(9), eager)})["now"]
    assert tokens_of(out) == [EOS] and out[-1].finish_reason == "stop"
    held = SamplingParams(max_tokens=20, logit_bias={EOS: 40}, min_tokens=5)
    out = run(engine, {"later": (prompt(9), held)})["later"]
    assert len(tokens_of(out)) == 6 and tokens_of(out)[-1] == EOS and EOS not in tokens_of(out)[:5]
    assert out[-1].finish_reason == "stop"


def test_stop_strings_do_not_end_a_request_before_min_tokens(tmp_path):
    engine = LLMEngine(ensure_default_model(tmp_path))
    p = engine.tokenizer.encode("The wind turns the blades")
    base = dict(max_tokens=24, temperature=1.0, seed=5, ignore_eos=True)
    full = run(engine, {"full": (p, SamplingParams(**base))})["full"]
    text = "".join(o.new_text for o in full)
    stop = text[2:4]
    early = run(engine, {"early": (p, SamplingParams(**base, stop=(stop,)))})["early"]
    assert len(tokens_of(early)) < 24 and early[-1].finish_reason == "stop"
    late = run(engine, {"late": (p, SamplingParams(**base, stop=(stop,), min_tokens=24))})["late"]
    assert tokens_of(late) == tokens_of(full) and late[-1].finish_reason == "length"


def test_seeded_sampling_with_penalties_is_reproducible_across_engines_batches_and_preemption(checkpoint):
    params = SamplingParams(
        max_tokens=20, temperature=0.9, top_p=0.95, min_p=0.02, seed=11, presence_penalty=0.6, frequency_penalty=0.4,
        repetition_penalty=1.3, ignore_eos=True,
    )
    alone = LLMEngine(checkpoint).generate([prompt(30)], params)[0]
    crowded = LLMEngine(checkpoint, EngineConfig(chunk_size=16, num_kv_blocks=12))
    others = [prompt(60, seed=s) for s in range(1, 6)]
    outs = crowded.generate([*others, prompt(30)], [SamplingParams(max_tokens=20, ignore_eos=True)] * 5 + [params])
    assert crowded.scheduler.num_preemptions > 0
    assert outs[-1] == alone
    unpenalised = LLMEngine(checkpoint).generate([prompt(30)], SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=11, ignore_eos=True))
    assert unpenalised[0] != alone


# -- logprobs -------------------------------------------------------------------------------------------
def test_greedy_logprobs_equal_transformers_log_softmax_and_the_choice_is_top_one(checkpoint, hf_model):
    engine = LLMEngine(checkpoint, EngineConfig(chunk_size=16))
    prompts = {f"r{n}": prompt(n, seed=n) for n in (3, 20, 45)}
    outs = run(engine, {rid: (p, SamplingParams(max_tokens=10, logprobs=4, ignore_eos=True)) for rid, p in prompts.items()})
    for rid, p in prompts.items():
        ids = p + tokens_of(outs[rid])
        reference = hf_logits(hf_model, ids).log_softmax(-1)
        records = [r for o in outs[rid] for r in o.logprobs]
        assert len(records) == 10
        for i, record in enumerate(records):
            position = len(p) - 1 + i
            assert record.token_id == ids[len(p) + i] == record.top[0][0]
            assert record.logprob == pytest.approx(float(reference[position, record.token_id]), abs=1e-4)
            assert len(record.top) == 4
            best = reference[position].topk(4)
            assert [t for t, _ in record.top] == best.indices.tolist()
            assert [v for _, v in record.top] == pytest.approx(best.values.tolist(), abs=1e-4)


def test_requests_that_do_not_ask_get_no_logprobs(checkpoint):
    outs = run(LLMEngine(checkpoint), {"plain": (prompt(5), SamplingParams(max_tokens=3, ignore_eos=True))})["plain"]
    assert all(o.logprobs == [] and o.prompt_logprobs == [] for o in outs)


def expected_prompt_logprobs(hf_model, p: list[int], k: int):
    reference = hf_logits(hf_model, p).log_softmax(-1)
    return [(p[i], float(reference[i - 1, p[i]]), reference[i - 1].topk(k).indices.tolist()) for i in range(1, len(p))]


def assert_prompt_logprobs(records, expected) -> None:
    assert records[0] is None and len(records) == len(expected) + 1
    for record, (token, logprob, top) in zip(records[1:], expected):
        assert record.token_id == token
        assert record.logprob == pytest.approx(logprob, abs=1e-4)
        assert [t for t, _ in record.top] == top


@pytest.mark.parametrize("chunk_size", [7, 16, 512])
def test_prompt_logprobs_over_a_chunked_prefill_equal_transformers(checkpoint, hf_model, chunk_size):
    p = prompt(50, seed=4)
    engine = LLMEngine(checkpoint, EngineConfig(chunk_size=chunk_size))
    outs = run(engine, {"p": (p, SamplingParams(max_tokens=4, prompt_logprobs=3, ignore_eos=True))})["p"]
    assert_prompt_logprobs(outs[0].prompt_logprobs, expected_prompt_logprobs(hf_model, p, 3))
    assert all(o.prompt_logprobs == [] for o in outs[1:])  # only on the first output


def test_prompt_logprobs_are_whole_with_a_warm_prefix_cache_and_under_preemption(checkpoint, hf_model):
    p = prompt(70, seed=5)
    expected = expected_prompt_logprobs(hf_model, p, 2)
    engine = LLMEngine(checkpoint, EngineConfig(chunk_size=16, num_kv_blocks=12))
    engine.generate([p], SamplingParams(max_tokens=2, ignore_eos=True))  # leaves the prompt's blocks in the prefix cache
    assert engine.block_manager.cached_block_hashes()
    others = {f"o{s}": (prompt(60, seed=s), SamplingParams(max_tokens=20, ignore_eos=True)) for s in range(3)}
    outs = run(engine, {**others, "p": (p, SamplingParams(max_tokens=20, prompt_logprobs=2, logprobs=1, ignore_eos=True))})
    assert engine.scheduler.num_preemptions > 0
    firsts = [o for o in outs["p"] if o.prompt_logprobs]
    assert len(firsts) == 1 and firsts[0] is outs["p"][0]
    assert_prompt_logprobs(firsts[0].prompt_logprobs, expected)
    assert [len(o.logprobs) for o in outs["p"]] == [1] * 20


def test_logprobs_cross_the_prefill_to_decode_handoff(checkpoint):
    params = SamplingParams(max_tokens=12, logprobs=3, prompt_logprobs=1, ignore_eos=True)
    p = prompt(33, seed=6)
    colocated = run(LLMEngine(checkpoint, EngineConfig(chunk_size=16)), {"c": (p, params)})["c"]
    prefill = LLMEngine(checkpoint, EngineConfig(mode="prefill", chunk_size=16))
    decode = LLMEngine(checkpoint, EngineConfig(mode="decode"))
    [first] = run(prefill, {"h": (p, params)})["h"]
    assert first.handoff is not None and len(first.logprobs) == 1
    decode.add_handoff(first.handoff)
    rest = []
    while decode.has_unfinished():
        rest.extend(decode.step())
    assert first.prompt_logprobs == colocated[0].prompt_logprobs and all(o.prompt_logprobs == [] for o in rest)
    handed = [r for o in [first, *rest] for r in o.logprobs]
    together = [r for o in colocated for r in o.logprobs]
    assert [r.token_id for r in handed] == [r.token_id for r in together]
    for a, b in zip(handed, together):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5) and [t for t, _ in a.top] == [t for t, _ in b.top]


def test_pool_replicas_stream_logprobs_in_their_token_chunks(checkpoint):
    from workers.backends.pavana import chunk_from_output

    outs = run(LLMEngine(checkpoint), {"r": (prompt(6), SamplingParams(max_tokens=2, logprobs=1, prompt_logprobs=0, ignore_eos=True))})["r"]
    first, last = (chunk_from_output(o, "colocated", "r0") for o in outs)
    assert first.logprobs == tuple(outs[0].logprobs) and len(first.logprobs) == 1
    assert first.prompt_logprobs == tuple(outs[0].prompt_logprobs) and len(first.prompt_logprobs) == 6
    assert first.prompt_logprobs[0] is None and last.prompt_logprobs == ()
