"""A request resumed after k output tokens continues exactly where it stopped.

When a replica dies mid-stream, the router sends the prompt and the output the client already
has to another replica (`GenerateRequest.resume_token_ids`). That replica recomputes them as
after a preemption and samples on from output position k. These tests hold the engine to the
promise the router makes to the client: the resumed continuation is token for token (and
character for character) the undisturbed run's — greedy, seeded, with penalties, with a stop
string, with a grammar, colocated and across a prefill → decode hand-off.
"""

from __future__ import annotations

import json

import llguidance
import pytest
import torch
from tiny_checkpoints import build_tiny_llama

from workers.engine.config import EngineConfig
from workers.engine.default_model import ensure_default_model
from workers.engine.llm_engine import LLMEngine
from workers.engine.outputs import KVHandoff, RequestOutput
from workers.engine.sampling import SamplingParams

GREEDY = SamplingParams(max_tokens=24, ignore_eos=True)
SEEDED = SamplingParams(max_tokens=24, temperature=0.8, seed=17, ignore_eos=True)
PENALISED = SamplingParams(
    max_tokens=24, temperature=0.8, top_p=0.95, seed=5, presence_penalty=0.6, frequency_penalty=0.4, repetition_penalty=1.3,
    ignore_eos=True,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("llama"), seed=3)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """The bundled tiny model: random weights, a real tokenizer (text, stop strings, grammars)."""
    return ensure_default_model(tmp_path_factory.mktemp("cache"))


def prompt(n: int, seed: int = 0) -> list[int]:
    return torch.randint(3, 384, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def drain(engine: LLMEngine) -> list[RequestOutput]:
    outs: list[RequestOutput] = []
    while engine.has_unfinished():
        outs.extend(engine.step())
    return outs


def run(engine: LLMEngine, rid: str, p: list[int], params: SamplingParams, **resume) -> list[RequestOutput]:
    engine.add(engine.prepare(rid, p, params, **resume))
    return [o for o in drain(engine) if o.request_id == rid]


def tokens(outs: list[RequestOutput]) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


def text(outs: list[RequestOutput]) -> str:
    return "".join(o.new_text for o in outs)


def hand_off(prefill: LLMEngine, decode: LLMEngine, rid: str, p: list[int], params: SamplingParams, **resume) -> list[RequestOutput]:
    """What a prefill replica and then a decode replica stream for one (resumed) request."""
    [first] = run(prefill, rid, p, params, **resume)
    assert first.handoff is not None and first.handoff.num_prompt_tokens == len(p)
    assert first.handoff.kv.shape[2] == len(p) + len(resume.get("resume_token_ids", ()))
    decode.add_handoff(first.handoff)
    return [first, *drain(decode)]


@pytest.mark.parametrize("params", [GREEDY, SEEDED, PENALISED], ids=["greedy", "seeded", "penalties"])
@pytest.mark.parametrize("k", [1, 7, 16])
def test_a_colocated_request_resumed_after_k_tokens_continues_the_undisturbed_run(checkpoint, params, k):
    engine = LLMEngine(checkpoint, EngineConfig(chunk_size=16, num_kv_blocks=64))
    p = prompt(21, seed=k)
    whole = tokens(run(engine, "whole", p, params))
    resumed = run(engine, "resumed", p, params, resume_token_ids=whole[:k])
    assert tokens(resumed) == whole[k:]
    # The engine counts the carried output as output: max_tokens and usage go on from k.
    assert [o.num_output_tokens for o in resumed] == list(range(k + 1, len(whole) + 1))
    assert resumed[-1].num_prompt_tokens == len(p) and resumed[-1].finish_reason == "length"


@pytest.mark.parametrize("params", [GREEDY, SEEDED, PENALISED], ids=["greedy", "seeded", "penalties"])
def test_a_resumed_request_handed_from_prefill_to_decode_continues_the_undisturbed_run(checkpoint, params):
    config = dict(chunk_size=16, num_kv_blocks=64)
    colocated = LLMEngine(checkpoint, EngineConfig(**config))
    prefill = LLMEngine(checkpoint, EngineConfig(mode="prefill", **config))
    decode = LLMEngine(checkpoint, EngineConfig(mode="decode", **config))
    p = prompt(19, seed=4)
    whole = tokens(run(colocated, "whole", p, params))
    assert tokens(hand_off(prefill, decode, "plain", p, params)) == whole
    k = 9
    resumed = hand_off(prefill, decode, "resumed", p, params, resume_token_ids=whole[:k])
    assert tokens(resumed) == whole[k:]
    assert resumed[0].num_output_tokens == k + 1 and resumed[-1].num_output_tokens == len(whole)


def test_a_resumed_request_continues_through_preemption(checkpoint):
    """Recomputing the carried output is a preemption's recomputation; a real preemption of the
    resumed request on a crowded cache must not disturb it either."""
    p = prompt(30)
    whole = tokens(run(LLMEngine(checkpoint), "whole", p, SEEDED))
    crowded = LLMEngine(checkpoint, EngineConfig(chunk_size=16, num_kv_blocks=12))
    for i in range(5):
        crowded.add_request(f"other-{i}", prompt(60, seed=i + 1), SamplingParams(max_tokens=20, ignore_eos=True))
    crowded.add(crowded.prepare("resumed", p, SEEDED, resume_token_ids=whole[:6]))
    outs = [o for o in drain(crowded) if o.request_id == "resumed"]
    assert crowded.scheduler.num_preemptions > 0
    assert tokens(outs) == whole[6:]


def test_resumed_text_and_stop_strings_continue_the_undisturbed_run(text_model):
    engine = LLMEngine(text_model)
    p = engine.tokenizer.encode("Wind farms feed the sites")
    base = dict(max_tokens=40, temperature=1.0, seed=11, ignore_eos=True)
    full = run(engine, "full", p, SamplingParams(**base))
    full_text = text(full)
    assert len(full_text) > 20
    stop = full_text[14:17]
    cut = full_text.index(stop)
    stopped = run(engine, "stopped", p, SamplingParams(**base, stop=(stop,)))
    assert text(stopped) == full_text[:cut] and stopped[-1].finish_reason == "stop"
    for k in (2, 5):  # resumed before the stop string begins: what was streamed is a prefix
        streamed = stopped[:k]
        chars = len(text(streamed))
        resumed = run(engine, f"resumed-{k}", p, SamplingParams(**base, stop=(stop,)),
                      resume_token_ids=tokens(streamed), resume_text_chars=chars)
        assert text(streamed) + text(resumed) == full_text[:cut]
        assert resumed[-1].finish_reason == "stop"
        assert tokens(streamed) + tokens(resumed) == tokens(stopped)


def test_a_resumed_request_hands_off_its_text_to_decode(text_model):
    params = SamplingParams(max_tokens=30, temperature=0.8, seed=3, ignore_eos=True)
    colocated = LLMEngine(text_model)
    p = colocated.tokenizer.encode("Sites beside wind farms")
    whole = run(colocated, "whole", p, params)
    k = 8
    chars = len(text(whole[:k]))
    moved = hand_off(LLMEngine(text_model, EngineConfig(mode="prefill")), LLMEngine(text_model, EngineConfig(mode="decode")),
                     "moved", p, params, resume_token_ids=tokens(whole[:k]), resume_text_chars=chars)
    assert tokens(moved) == tokens(whole[k:])
    assert text(whole[:k]) + text(moved) == text(whole)


def test_a_resumed_grammar_continues_from_the_carried_output(text_model):
    schema = {
        "type": "object",
        "properties": {"kind": {"enum": ["wind", "solar"]}, "mw": {"type": "integer", "minimum": 0, "maximum": 999}},
        "required": ["kind", "mw"], "additionalProperties": False,
    }
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    params = SamplingParams(max_tokens=60, temperature=1.0, seed=9, grammar=grammar)
    engine = LLMEngine(text_model, EngineConfig(num_kv_blocks=256))
    p = engine.tokenizer.encode("JSON please:")
    whole = run(engine, "whole", p, params)
    assert len(tokens(whole)) > 4
    k = 3
    resumed = run(engine, "resumed", p, params, resume_token_ids=tokens(whole[:k]), resume_text_chars=len(text(whole[:k])))
    assert tokens(resumed) == tokens(whole[k:])
    json.loads(text(whole[:k]) + text(resumed))


@pytest.mark.parametrize(
    ("resume", "field"),
    [
        (dict(resume_token_ids=[5, 384]), "resume_token_ids"),  # outside the vocabulary
        (dict(resume_token_ids=[5] * 24), "resume_token_ids"),  # nothing of max_tokens left
        (dict(resume_token_ids=[5] * 10, resume_text_chars=-1), "resume_text_chars"),
    ],
)
def test_resumed_output_that_the_request_could_not_have_had_is_refused(checkpoint, resume, field):
    engine = LLMEngine(checkpoint)
    with pytest.raises(ValueError, match=f"^{field}:"):
        engine.prepare("bad", prompt(8), GREEDY, **resume)


def test_resumed_output_must_leave_room_in_the_context(checkpoint):
    engine = LLMEngine(checkpoint, EngineConfig(max_model_len=32))
    with pytest.raises(ValueError, match="^resume_token_ids:.*context of 32"):
        engine.prepare("long", prompt(20), SamplingParams(max_tokens=100), resume_token_ids=[5] * 12)


def test_a_handoff_whose_kv_does_not_cover_all_but_the_last_token_is_refused(checkpoint):
    prefill = LLMEngine(checkpoint, EngineConfig(mode="prefill"))
    [first] = run(prefill, "h", prompt(10), GREEDY, resume_token_ids=[7, 8, 9])
    handoff = first.handoff
    short = KVHandoff(handoff.request_id, handoff.token_ids, handoff.num_prompt_tokens, handoff.kv[:, :, :10], handoff.params)
    with pytest.raises(ValueError, match="^kv: holds 10 tokens, expected 13"):
        LLMEngine(checkpoint, EngineConfig(mode="decode")).prepare_handoff(short)
