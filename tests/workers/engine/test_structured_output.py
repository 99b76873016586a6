"""Grammar-constrained decoding with llguidance, on the bundled tiny model (random weights, a
real byte-level tokenizer): whatever the weights, the output must parse and validate, and the
grammar's state must survive what the engine does to sequences — batching, preemption by
recomputation, the prefill→decode hand-off.

The schemas bound every value (string lengths, integer ranges, array sizes) and the grammars
fix the whitespace, so the language is finite and even a random model finishes; one slow test
runs SmolLM2 on llguidance's default (flexible) whitespace."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import jsonschema
import llguidance
import pytest

from workers.engine.async_engine import AsyncEngine, RequestFailed
from workers.engine.config import EngineConfig
from workers.engine.default_model import ensure_default_model
from workers.engine.llm_engine import LLMEngine
from workers.engine.sampling import SamplingParams
from tests.workers.engine.engine_runs import run, tokens_of

SCHEMA = {
    "type": "object",
    "properties": {
        "site": {"type": "string", "maxLength": 8},
        "kind": {"enum": ["wind", "solar", "grid"]},
        "power": {
            "type": "object",
            "properties": {"mw": {"type": "integer", "minimum": 0, "maximum": 999}, "online": {"type": "boolean"}},
            "required": ["mw", "online"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["site", "kind", "power", "tags"],
    "additionalProperties": False,
}
GRAMMAR = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults={"whitespace_flexible": False})
EOS = 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return ensure_default_model(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def engine(model_dir):
    return LLMEngine(model_dir, EngineConfig(num_kv_blocks=512))


def sampled(seed: int | None, **kwargs) -> SamplingParams:
    base = dict(max_tokens=300, grammar=GRAMMAR)
    if seed is not None:
        base.update(temperature=1.0, seed=seed)
    return SamplingParams(**{**base, **kwargs})


def text_of(outs) -> str:
    return "".join(o.new_text for o in outs)


def test_json_schema_outputs_parse_and_validate(engine):
    p = engine.tokenizer.encode("The site, as JSON:")
    outs = run(engine, {f"s{seed}": (p, sampled(seed)) for seed in [None, *range(7)]})
    kinds = set()
    for rid, out in outs.items():
        assert out[-1].finish_reason == "stop", (rid, text_of(out))
        value = json.loads(text_of(out))
        jsonschema.validate(value, SCHEMA)
        assert tokens_of(out)[-1] == EOS and EOS not in tokens_of(out)[:-1]
        kinds.add(value["kind"])
    assert len(kinds) > 1  # the grammar constrains; sampling still chooses
    assert engine.num_free_blocks == engine.block_manager.num_blocks


def test_unconstrained_random_output_is_not_json(engine):
    """The control for the test above: without the grammar this model writes no JSON."""
    p = engine.tokenizer.encode("The site, as JSON:")
    out = run(engine, {"free": (p, SamplingParams(max_tokens=40, temperature=1.0, seed=0))})["free"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(text_of(out))


def test_a_grammar_handed_from_prefill_to_decode_continues_token_for_token(model_dir):
    p = [*range(5, 40)]
    requests = {"greedy": (p, sampled(None)), "seeded": (p, sampled(3, logprobs=2))}
    colocated = run(LLMEngine(model_dir, EngineConfig(chunk_size=16)), requests)
    prefill = LLMEngine(model_dir, EngineConfig(mode="prefill", chunk_size=16))
    decode = LLMEngine(model_dir, EngineConfig(mode="decode"))
    firsts = run(prefill, requests)
    handed = {}
    for rid, [first] in firsts.items():
        assert first.handoff is not None
        decode.add_handoff(first.handoff)
        handed[rid] = [first]
    while decode.has_unfinished():
        for out in decode.step():
            handed[out.request_id].append(out)
    for rid in requests:
        assert tokens_of(handed[rid]) == tokens_of(colocated[rid])
        assert handed[rid][-1].finish_reason == colocated[rid][-1].finish_reason == "stop"
        jsonschema.validate(json.loads(text_of(handed[rid])), SCHEMA)


def test_a_decode_replica_refuses_a_handoff_whose_tokens_break_the_grammar(model_dir):
    prefill = LLMEngine(model_dir, EngineConfig(mode="prefill"))
    [first] = run(prefill, {"h": ([5, 6, 7], sampled(None))})["h"]
    broken = dataclasses.replace(first.handoff, token_ids=[*first.handoff.token_ids[:-1], EOS])
    decode = LLMEngine(model_dir, EngineConfig(mode="decode"))
    with pytest.raises(ValueError, match="^grammar: the tokens already generated"):
        decode.add_handoff(broken)
    assert not decode.has_unfinished()


def test_preemption_by_recomputation_feeds_the_grammar_each_token_once(model_dir):
    prompts = {f"r{i}": ([*range(10 + i, 60 + i)], sampled(i)) for i in range(5)}
    roomy = run(LLMEngine(model_dir, EngineConfig(chunk_size=32, num_kv_blocks=256)), prompts)
    tight = LLMEngine(model_dir, EngineConfig(chunk_size=32, num_kv_blocks=14))
    squeezed = run(tight, prompts)
    assert tight.scheduler.num_preemptions > 0
    for rid in prompts:
        assert tokens_of(squeezed[rid]) == tokens_of(roomy[rid])
        jsonschema.validate(json.loads(text_of(squeezed[rid])), SCHEMA)


def test_a_finished_grammar_stops_the_request_even_when_it_ignores_eos(engine):
    out = run(engine, {"ignore": ([5, 6, 7], sampled(1, ignore_eos=True))})["ignore"]
    assert out[-1].finish_reason == "stop" and tokens_of(out).count(EOS) == 1 and tokens_of(out)[-1] == EOS
    jsonschema.validate(json.loads(text_of(out)), SCHEMA)


def test_a_grammar_that_cannot_finish_in_max_tokens_ends_with_length(engine):
    out = run(engine, {"short": ([5, 6, 7], sampled(2, max_tokens=6))})["short"]
    assert out[-1].finish_reason == "length" and len(tokens_of(out)) == 6
    text = text_of(out)
    assert text and '{"site":"'.startswith(text[:9])  # on its way to valid JSON


def test_a_lark_grammar_wins_over_min_tokens_once_complete(engine):
    grammar = llguidance.LLMatcher.grammar_from_lark('start: "yes" | "no"')
    outs = run(engine, {f"l{s}": ([9, 10, 11], SamplingParams(max_tokens=10, min_tokens=8, temperature=1.0, seed=s, grammar=grammar)) for s in range(6)})
    answers = {text_of(out) for out in outs.values()}
    assert answers <= {"yes", "no"} and answers
    assert all(out[-1].finish_reason == "stop" for out in outs.values())


def test_grammar_requests_need_a_tokenizer_and_a_valid_grammar(tiny_llama_dir, engine):
    no_tokenizer = LLMEngine(tiny_llama_dir)
    with pytest.raises(ValueError, match="^grammar: .*no tokenizer.json"):
        no_tokenizer.add_request("g", [5, 6], SamplingParams(grammar=GRAMMAR))
    with pytest.raises(ValueError, match="^grammar: "):
        engine.add_request("bad", [5, 6], SamplingParams(grammar="start: ("))
    assert not no_tokenizer.has_unfinished() and not engine.has_unfinished()


def test_a_refused_token_fails_only_its_request(engine):
    seq = engine.prepare("broken", [5, 6, 7], sampled(None))
    assert not seq.grammar_matcher.consume_token(EOS)  # puts the matcher in its error state, as a bug would
    engine.add(seq)
    engine.add_request("fine", [5, 6, 7], sampled(None))
    outs = {"broken": [], "fine": []}
    while engine.has_unfinished():
        for out in engine.step():
            outs[out.request_id].append(out)
    [failed] = outs["broken"]
    assert failed.finished and failed.finish_reason == "error" and failed.error.startswith("grammar: token")
    assert outs["fine"][-1].finish_reason == "stop"
    assert engine.num_free_blocks == engine.block_manager.num_blocks


def test_the_async_front_raises_a_refused_token_to_its_stream_alone(model_dir):
    inner = LLMEngine(model_dir)
    grammars = inner.grammars
    doomed = llguidance.LLMatcher.grammar_from_lark('start: "yes" | "no"')
    make, consume = grammars.matcher, grammars.consume
    refusing: list[object] = []

    def matcher(grammar, consumed=()):
        m = make(grammar, consumed)
        if grammar == doomed:
            refusing.append(m)
        return m

    def refuse(m, token):  # what a bug in the mask would look like: the matcher refuses the token
        return (False, "grammar: token refused (test)") if any(m is r for r in refusing) else consume(m, token)

    grammars.matcher, grammars.consume = matcher, refuse  # type: ignore[method-assign]
    engine = AsyncEngine(inner)

    async def text(rid: str, grammar: str) -> str:
        return "".join([o.new_text async for o in engine.generate(rid, [5, 6, 7], sampled(None, grammar=grammar))])

    async def main() -> str:
        fine = asyncio.create_task(text("fine", GRAMMAR))
        with pytest.raises(RequestFailed, match="refused"):
            await text("broken", doomed)
        try:
            return await fine
        finally:
            await engine.shutdown()

    jsonschema.validate(json.loads(asyncio.run(main())), SCHEMA)
    assert inner.num_free_blocks == inner.block_manager.num_blocks


@pytest.mark.slow
def test_smollm2_writes_valid_json_with_flexible_whitespace():
    from workers.engine.smollm2 import ensure_smollm2

    engine = LLMEngine(ensure_smollm2(), EngineConfig(num_kv_blocks=256, chunk_size=128))
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "country": {"type": "string"},
            "kind": {"enum": ["capital", "town"]},
            "facts": {"type": "object", "properties": {"river": {"type": "string"}}, "required": ["river"]},
        },
        "required": ["city", "country", "kind", "facts"],
    }
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
    p = engine.tokenizer.encode_chat([{"role": "user", "content": "Describe Paris in JSON: city, country, kind, facts.river."}])
    out = run(engine, {"paris": (p, SamplingParams(max_tokens=120, grammar=grammar))})["paris"]
    assert out[-1].finish_reason == "stop", text_of(out)
    value = json.loads(text_of(out))
    jsonschema.validate(value, schema)
    assert value["city"] == "Paris"
