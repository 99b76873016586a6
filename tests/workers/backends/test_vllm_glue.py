"""`VllmBackend`'s glue over a stand-in for vLLM's engine (no vLLM, no GPU): the colocated
stream, a prefill that keeps its first token, the decode's prompt and budgets, a first token
that ends the request, and stats fed by the stat logger."""

from __future__ import annotations

import asyncio
import json
import sys
import types
from types import SimpleNamespace

import pytest

from workers.backends import vllm as vllm_backend
from workers.backends.vllm_inputs import VllmHandoff
from workers.engine.sampling import SamplingParams
from workers.requests import GenerateRequest


class FakeEngine:
    """Answers each request with the tokens `script` gives for its prompt, one per output."""

    def __init__(self, script, stat_logger) -> None:
        self.script, self.calls, self.aborted = script, [], []
        self.vllm_config = SimpleNamespace(cache_config=SimpleNamespace(num_gpu_blocks=100))
        self.logger = stat_logger(self.vllm_config, 0)

    async def generate(self, prompt, sampling, request_id, *, priority=0):
        self.calls.append((prompt, sampling, request_id, priority))
        tokens, reason, kv = self.script(prompt["prompt_token_ids"], sampling)
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            self.logger.record(SimpleNamespace(num_running_reqs=1, num_waiting_reqs=0, kv_cache_usage=0.5), SimpleNamespace(num_prompt_tokens=0, num_generation_tokens=1))
            completion = SimpleNamespace(token_ids=[token], text=f"<{token}>", logprobs=None, finish_reason=reason if last else None)
            yield SimpleNamespace(outputs=[completion], finished=last, prompt_logprobs=None, kv_transfer_params=kv if last else None)

    async def abort(self, request_id):
        self.aborted.append(request_id)

    def shutdown(self):
        pass


@pytest.fixture
def backend_for(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    fake = types.ModuleType("vllm")
    fake.__version__ = "fake"
    fake.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    fake.AsyncEngineArgs = lambda **kw: kw
    modules = {
        "vllm": fake,
        "vllm.v1": types.ModuleType("vllm.v1"),
        "vllm.v1.engine": types.ModuleType("vllm.v1.engine"),
        "vllm.v1.engine.async_llm": types.ModuleType("vllm.v1.engine.async_llm"),
        "vllm.v1.metrics": types.ModuleType("vllm.v1.metrics"),
        "vllm.v1.metrics.loggers": types.ModuleType("vllm.v1.metrics.loggers"),
        "vllm.sampling_params": types.ModuleType("vllm.sampling_params"),
    }
    modules["vllm.v1.metrics.loggers"].StatLoggerBase = object
    modules["vllm.sampling_params"].RequestOutputKind = SimpleNamespace(DELTA="delta")
    modules["vllm.sampling_params"].StructuredOutputsParams = lambda **kw: kw
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(vllm_backend.Tokenizer, "from_dir", staticmethod(lambda path: SimpleNamespace(decode=lambda ids: "".join(f"<{i}>" for i in ids))))

    def make(script, stage="colocated"):
        modules["vllm.v1.engine.async_llm"].AsyncLLM = SimpleNamespace(
            from_engine_args=lambda args, stat_loggers: FakeEngine(script, stat_loggers[0])
        )
        return vllm_backend.VllmBackend(str(tmp_path), "", {"block_size": 2}, stage=stage, replica_id="r0")

    return make


async def collect(stream):
    return [c async for c in stream]


def test_colocated_stream_counts_and_finishes_with_vllms_reason(backend_for):
    backend = backend_for(lambda ids, s: ([7, 8, 9], "length", None))
    chunks = asyncio.run(collect(backend.generate(GenerateRequest("a", [1, 2, 3, 4], SamplingParams(max_tokens=3), priority=2))))
    assert [c.token_ids for c in chunks] == [[7], [8], [9]]
    assert [c.num_output_tokens for c in chunks] == [1, 2, 3]
    assert chunks[-1].finished and chunks[-1].finish_reason == "length" and chunks[-1].replica_id == "r0"
    prompt, sampling, rid, priority = backend.engine.calls[0]
    assert prompt == {"prompt_token_ids": [1, 2, 3, 4]} and priority == 2 and sampling.output_kind == "delta"
    stats = backend.stats()
    assert stats.total_kv_blocks == 100 and stats.free_kv_blocks == 50 and stats.running == 1
    assert len(stats.prefix_hashes) == 2 and stats.queued_prefill_tokens == 0


def test_prefill_keeps_its_first_token_and_the_decode_continues_after_it(backend_for):
    kv = {"do_remote_prefill": True, "remote_block_ids": [3]}
    prefill = backend_for(lambda ids, s: ([7], "length", kv), stage="prefill")
    request = GenerateRequest("p", [1, 2, 3], SamplingParams(max_tokens=5, min_tokens=2), resume_token_ids=(4,), resume_text_chars=3)
    done = asyncio.run(prefill.prefill(request))
    _, sampling, _, _ = prefill.engine.calls[0]
    assert sampling.max_tokens == 1 and sampling.extra_args == {"kv_transfer_params": {"do_remote_decode": True}}
    assert done.first.token_ids == [7] and not done.first.finished and done.first.finish_reason is None
    assert done.first.text == "<7>" and done.first.num_output_tokens == 2
    assert done.handoff == VllmHandoff([1, 2, 3, 4, 7], kv, 2, 3 + len("<7>"))

    decode = backend_for(lambda ids, s: ([8, 9, 10], "length", None), stage="decode")
    chunks = asyncio.run(collect(decode.decode(request, done)))
    prompt, sampling, _, _ = decode.engine.calls[0]
    assert prompt == {"prompt_token_ids": [1, 2, 3, 4, 7]}
    assert sampling.max_tokens == 3 and sampling.min_tokens == 0 and sampling.extra_args == {"kv_transfer_params": kv}
    assert [c.num_output_tokens for c in chunks] == [3, 4, 5] and chunks[-1].finish_reason == "length"


def test_a_first_token_that_stops_hands_nothing_off(backend_for):
    prefill = backend_for(lambda ids, s: ([2], "stop", None), stage="prefill")
    done = asyncio.run(prefill.prefill(GenerateRequest("s", [1, 2, 3], SamplingParams(max_tokens=5))))
    assert done.handoff is None and done.first.finished and done.first.finish_reason == "stop"


def test_a_last_token_left_is_not_kept_for_a_decode(backend_for):
    prefill = backend_for(lambda ids, s: ([2], "length", None), stage="prefill")
    done = asyncio.run(prefill.prefill(GenerateRequest("o", [1, 2, 3], SamplingParams(max_tokens=1))))
    _, sampling, _, _ = prefill.engine.calls[0]
    assert not hasattr(sampling, "extra_args") and done.handoff is None and done.first.finish_reason == "length"


def test_leaving_a_stream_early_aborts_it(backend_for):
    backend = backend_for(lambda ids, s: ([7, 8, 9], "length", None))

    async def first_only():
        stream = backend.generate(GenerateRequest("x", [1, 2], SamplingParams(max_tokens=3)))
        await stream.__anext__()
        await stream.aclose()

    asyncio.run(first_only())
    assert backend.engine.aborted == ["x"]
