"""Text out of the engine on the bundled default model (which has a tokenizer): streamed
deltas, stop strings, and text across the prefill→decode hand-off."""

from __future__ import annotations

import pytest

from workers.engine.config import EngineConfig
from workers.engine.default_model import ensure_default_model
from workers.engine.llm_engine import LLMEngine
from workers.engine.sampling import SamplingParams


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return ensure_default_model(tmp_path_factory.mktemp("cache"))


def run(engine: LLMEngine, rid: str, prompt: list[int], params: SamplingParams):
    engine.add_request(rid, prompt, params)
    outs = []
    while engine.has_unfinished():
        outs.extend(engine.step())
    return outs


def test_streamed_text_is_the_decoded_output(model_dir):
    engine = LLMEngine(model_dir)
    prompt = engine.tokenizer.encode("The wind turns the blades")
    outs = run(engine, "a", prompt, SamplingParams(max_tokens=40, temperature=1.0, seed=5, ignore_eos=True))
    ids = [t for o in outs for t in o.new_token_ids]
    assert "".join(o.new_text for o in outs) == engine.tokenizer.decode(ids)


def test_stop_string_cuts_the_text_where_it_begins(model_dir):
    engine = LLMEngine(model_dir)
    prompt = engine.tokenizer.encode("Power comes and goes")
    params = SamplingParams(max_tokens=40, temperature=1.0, seed=11, ignore_eos=True)
    full = "".join(o.new_text for o in run(engine, "full", prompt, params))
    assert len(full) > 12
    stop = full[8:11]  # three characters from the middle
    cut = full.index(stop)
    outs = run(engine, "cut", prompt, SamplingParams(max_tokens=40, temperature=1.0, seed=11, ignore_eos=True, stop=(stop,)))
    assert "".join(o.new_text for o in outs) == full[:cut]
    assert outs[-1].finish_reason == "stop"


def test_handoff_streams_the_same_text_as_colocated(model_dir):
    params = SamplingParams(max_tokens=30, temperature=0.8, seed=3, ignore_eos=True)
    colocated = LLMEngine(model_dir)
    prompt = colocated.tokenizer.encode("Sites beside wind farms")
    expected = run(colocated, "c", prompt, params)
    prefill = LLMEngine(model_dir, EngineConfig(mode="prefill"))
    decode = LLMEngine(model_dir, EngineConfig(mode="decode"))
    first = run(prefill, "h", prompt, params)
    assert len(first) == 1 and first[0].handoff is not None
    decode.add_handoff(first[0].handoff)
    rest = []
    while decode.has_unfinished():
        rest.extend(decode.step())
    outs = first + rest
    assert [t for o in outs for t in o.new_token_ids] == [t for o in expected for t in o.new_token_ids]
    assert "".join(o.new_text for o in outs) == "".join(o.new_text for o in expected)
