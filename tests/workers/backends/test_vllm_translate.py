"""The vLLM backend's translations, on a CPU and without vLLM: engine arguments, sampling
parameters, prompts with images, the P/D hand-off, finish reasons, logprobs, stats, metrics."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from llguidance import LLMatcher
from prometheus_client import CollectorRegistry, Counter, Gauge

from workers.backends.vllm_engine_args import DEFAULT_KV_CONNECTOR, engine_kwargs, kv_transfer_config
from workers.backends.vllm_inputs import (
    asks_remote_decode,
    continued_token_ids,
    first_token_ends,
    handoff_after_first,
    resumed_text_owed,
    vllm_prompt,
)
from workers.backends.vllm_metrics import vllm_metrics_text
from workers.backends.vllm_outputs import finish_reason, prompt_logprobs, token_logprobs
from workers.backends.vllm_sampling import CarriedGrammar, carried_penalty_bias, sampling_kwargs, structured_output_fields
from workers.backends.vllm_stats import PrefixHashLRU, StatsWindow, StepObservation, backend_stats, observation
from workers.engine.sampling import SamplingParams
from workers.engine.sequence import MultimodalSpan

SPEC_ENGINE = dict(policy="sarathi", chunk_size=512, max_num_seqs=32, block_size=16, num_kv_blocks=2048, enable_prefix_caching=True, dtype="bfloat16", num_threads=None)


# -- engine arguments --------------------------------------------------------------------------
def test_engine_kwargs_map_the_spec_and_turn_on_what_the_backend_needs():
    kwargs = engine_kwargs("/models/llama", {**SPEC_ENGINE, "max_model_len": 4096}, "colocated", multimodal=False)
    assert kwargs["model"] == "/models/llama"
    assert kwargs["enable_chunked_prefill"] is True and kwargs["max_num_batched_tokens"] == 512
    assert (kwargs["max_num_seqs"], kwargs["block_size"], kwargs["enable_prefix_caching"]) == (32, 16, True)
    assert kwargs["dtype"] == "bfloat16" and kwargs["max_model_len"] == 4096
    assert kwargs["scheduling_policy"] == "priority"
    assert kwargs["structured_outputs_config"] == {"backend": "guidance"}
    assert kwargs["disable_log_stats"] is False
    assert "kv_transfer_config" not in kwargs and "enable_mm_embeds" not in kwargs
    assert not any(k in kwargs for k in ("num_kv_blocks", "num_threads", "policy"))


def test_a_vision_checkpoint_takes_image_embeddings():
    assert engine_kwargs("/m", SPEC_ENGINE, "colocated", multimodal=True)["enable_mm_embeds"] is True


@pytest.mark.parametrize(("stage", "role"), [("prefill", "kv_producer"), ("decode", "kv_consumer")])
def test_disaggregated_stages_get_their_connector_role(stage, role):
    assert engine_kwargs("/m", SPEC_ENGINE, stage, multimodal=False)["kv_transfer_config"] == {"kv_connector": DEFAULT_KV_CONNECTOR, "kv_role": role}
    custom = kv_transfer_config(stage, {"kv_connector": "ExampleConnector", "kv_connector_extra_config": {"shared_storage_path": "/tmp/kv"}})
    assert custom == {"kv_connector": "ExampleConnector", "kv_role": role, "kv_connector_extra_config": {"shared_storage_path": "/tmp/kv"}}


def test_engine_kwargs_refuse_what_vllm_cannot_serve():
    with pytest.raises(ValueError, match="model.path"):
        engine_kwargs(None, SPEC_ENGINE, "colocated", multimodal=False)
    with pytest.raises(ValueError, match="prefill_first"):
        engine_kwargs("/m", {**SPEC_ENGINE, "policy": "prefill_first"}, "colocated", multimodal=False)
    with pytest.raises(ValueError, match="vision"):
        kv_transfer_config("vision", {})


# -- sampling ----------------------------------------------------------------------------------
def test_every_sampling_field_maps():
    params = SamplingParams(
        max_tokens=40, temperature=0.7, top_k=20, top_p=0.9, seed=7, stop_token_ids=(5, 6), stop=("END",), ignore_eos=True,
        presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=1.1, min_p=0.05, min_tokens=3,
        logit_bias={9: -2.0, 4: 1.5}, logprobs=3, prompt_logprobs=2,
    )
    kwargs = sampling_kwargs(params)
    assert kwargs == dict(
        max_tokens=40, min_tokens=3, temperature=0.7, top_p=0.9, top_k=20, min_p=0.05, seed=7, presence_penalty=0.5,
        frequency_penalty=0.25, repetition_penalty=1.1, stop=["END"], stop_token_ids=[5, 6], ignore_eos=True,
        logit_bias={4: 1.5, 9: -2.0}, logprobs=3, prompt_logprobs=2, include_stop_str_in_output=False, skip_special_tokens=True,
    )


def test_defaults_are_greedy_with_top_k_off_and_no_bias():
    kwargs = sampling_kwargs(SamplingParams())
    assert kwargs["temperature"] == 0.0 and kwargs["top_k"] == -1 and kwargs["logit_bias"] is None
    assert kwargs["logprobs"] is None and kwargs["prompt_logprobs"] is None and "structured_outputs" not in kwargs


def test_carried_tokens_shrink_the_budgets_and_carry_the_penalties_as_bias():
    params = SamplingParams(max_tokens=10, min_tokens=4, frequency_penalty=0.5, presence_penalty=0.25, logit_bias={3: 1.0}, prompt_logprobs=1)
    kwargs = sampling_kwargs(params, resume_token_ids=(3, 3, 8))
    assert kwargs["max_tokens"] == 7 and kwargs["min_tokens"] == 1
    assert kwargs["logit_bias"] == {3: 1.0 - 0.5 * 2 - 0.25, 8: -0.5 - 0.25}
    assert kwargs["prompt_logprobs"] is None
    assert carried_penalty_bias(SamplingParams(), (1, 2)) == {}


def test_carried_tokens_may_not_exhaust_the_budget():
    with pytest.raises(ValueError, match="max_tokens"):
        sampling_kwargs(SamplingParams(max_tokens=2), resume_token_ids=(1, 2))


def test_json_schema_grammar_becomes_vllm_json():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    grammar = LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults={"whitespace_flexible": False})
    fields = structured_output_fields(grammar)
    assert set(fields) == {"json"} and fields["json"]["properties"] == schema["properties"]
    assert fields["json"]["x-guidance"] == {"whitespace_flexible": False}
    assert sampling_kwargs(SamplingParams(grammar=grammar))["structured_outputs"] == fields


def test_lark_grammar_becomes_vllm_grammar():
    lark = 'start: "yes" | "no"'
    assert structured_output_fields(LLMatcher.grammar_from_lark(lark)) == {"grammar": lark}
    assert structured_output_fields(json.dumps({"grammars": [{"lark_grammar": lark, "json_schema": None}]})) == {"grammar": lark}


def test_grammars_vllm_cannot_take_are_refused():
    with pytest.raises(ValueError, match="several"):
        structured_output_fields(json.dumps({"grammars": [{"lark_grammar": "a"}, {"lark_grammar": "b"}]}))
    with pytest.raises(CarriedGrammar, match="colocated"):
        sampling_kwargs(SamplingParams(grammar='start: "x"'), resume_token_ids=(1,))


# -- prompts and images ------------------------------------------------------------------------
def test_a_text_prompt_is_its_token_ids():
    assert vllm_prompt([1, 2, 3]) == {"prompt_token_ids": [1, 2, 3]}


def test_images_go_in_as_embeddings_keyed_by_content():
    ids = [1, 9, 9, 9, 2, 9, 9, 3]
    a, b = torch.zeros(3, 8), torch.ones(2, 8)
    prompt = vllm_prompt(ids, [MultimodalSpan(5, 2, "hb", b), MultimodalSpan(1, 3, "ha", a)])
    assert prompt["prompt_token_ids"] == ids
    assert [e.shape[0] for e in prompt["multi_modal_data"]["image"]] == [3, 2]
    assert prompt["multi_modal_uuids"] == {"image": ["ha", "hb"]}


@pytest.mark.parametrize(
    ("span", "error"),
    [
        (MultimodalSpan(1, 3, "h", None), "no embeddings"),
        (MultimodalSpan(1, 3, "h", torch.zeros(2, 8)), "2 embedding rows"),
        (MultimodalSpan(3, 3, "h", torch.zeros(3, 8)), "runs past"),
        (MultimodalSpan(0, 3, "h", torch.zeros(3, 8)), "one repeated placeholder"),
    ],
)
def test_bad_image_spans_are_refused(span, error):
    with pytest.raises(ValueError, match=error):
        vllm_prompt([1, 9, 9, 9, 2], [span])


# -- the P/D hand-off --------------------------------------------------------------------------
def test_the_decode_prompt_keeps_the_first_token():
    prompt = continued_token_ids([1, 2, 3], (4, 5))
    handoff = handoff_after_first(prompt, [6], {"remote_block_ids": [0], "do_remote_prefill": True}, num_resumed=2, text_chars_sent=11)
    assert handoff.token_ids == [1, 2, 3, 4, 5, 6]
    assert handoff.num_output_tokens == 3 and handoff.text_chars_sent == 11
    assert handoff.kv_transfer_params == {"remote_block_ids": [0], "do_remote_prefill": True}
    with pytest.raises(ValueError, match="exactly one"):
        handoff_after_first(prompt, [6, 7], None, num_resumed=0, text_chars_sent=0)


def test_storage_connectors_hand_off_without_parameters():
    assert handoff_after_first([1], [2], None, num_resumed=0, text_chars_sent=1).kv_transfer_params is None


def test_only_a_request_that_goes_on_keeps_its_kv():
    assert asks_remote_decode(5) and not asks_remote_decode(1)


@pytest.mark.parametrize(
    ("reason", "left", "ends"),
    [("length", 5, False), ("length", 1, True), ("stop", 5, True), ("abort", 5, True), ("error", 5, True)],
)
def test_which_first_tokens_end_the_request(reason, left, ends):
    assert first_token_ends(reason, left) is ends


def test_a_prefill_without_finish_reason_is_an_error():
    with pytest.raises(ValueError):
        first_token_ends(None, 3)


def test_the_text_a_resumed_client_is_owed():
    vocab = {1: "Hello", 2: " wor", 3: "ld", 4: "!", 5: "\ufffd"}

    def decode(ids):
        return "".join(vocab[i] for i in ids)

    assert resumed_text_owed(decode, [1], (2, 3, 4), 4) == "ld!"
    assert resumed_text_owed(decode, [1], (2, 3), 6) == ""
    assert resumed_text_owed(decode, [1], (2, 5), 4) == ""  # an unfinished character is vLLM's to write
    assert resumed_text_owed(decode, [1], (), 0) == ""
    with pytest.raises(ValueError, match="decode to"):
        resumed_text_owed(decode, [1], (4,), 3)


# -- outputs -----------------------------------------------------------------------------------
def test_finish_reasons_pass_through_and_unknown_ones_fail():
    assert [finish_reason(r) for r in (None, "stop", "length", "abort", "error")] == [None, "stop", "length", "abort", "error"]
    with pytest.raises(ValueError, match="repetition"):
        finish_reason("repetition")


def lp(logprob, rank):
    return SimpleNamespace(logprob=logprob, rank=rank)


def test_logprobs_become_token_records_with_the_top_k_best_first():
    entries = [{7: lp(-0.1, 1), 3: lp(-2.0, 2)}, {8: lp(-3.0, 4), 1: lp(-0.2, 1), 2: lp(-1.5, 2)}]
    records = token_logprobs([7, 8], entries, 2)
    assert records[0].token_id == 7 and records[0].logprob == pytest.approx(-0.1)
    assert records[0].top == ((7, -0.1), (3, -2.0))
    assert records[1].top == ((1, -0.2), (2, -1.5))  # the chosen token, ranked 4th, is not in the top 2
    assert token_logprobs([7], None, None) == ()
    with pytest.raises(ValueError):
        token_logprobs([7, 8], entries[:1], 2)


def test_prompt_logprobs_start_with_none():
    records = prompt_logprobs([5, 6], [None, {6: lp(-0.5, 1)}], 1)
    assert records[0] is None and records[1].token_id == 6 and records[1].top == ((6, -0.5),)
    assert prompt_logprobs([5], None, None) == ()


# -- stats -------------------------------------------------------------------------------------
def obs(t, running=0, waiting=0, usage=0.0, prompt=0, generated=0):
    return StepObservation(t, running, waiting, usage, prompt, generated)


def test_stats_fill_every_field_from_vllm_steps():
    window = StatsWindow(window_s=10.0)
    window.observe(obs(100.0, running=2, waiting=1, usage=0.25))
    window.observe(obs(100.5, running=2, waiting=1, usage=0.25, prompt=300, generated=2))
    window.observe(obs(101.0, running=2, waiting=0, usage=0.5, generated=2))
    stats = backend_stats(window, 101.0, total_kv_blocks=1000, queued_prefill_tokens=64, prefix_hashes=frozenset({1, 2}))
    assert (stats.running, stats.waiting, stats.queued_prefill_tokens) == (2, 0, 64)
    assert (stats.free_kv_blocks, stats.total_kv_blocks) == (500, 1000)
    assert stats.tokens_per_s == pytest.approx(4 / 10)
    assert stats.busy_fraction == pytest.approx(1.0 / 10)
    # first step: 0.5 s split 300:2 between prefill and decode; second: 0.5 s of decode
    assert stats.prefill_tokens_per_busy_s == pytest.approx(300 / (0.5 * 300 / 302))
    assert stats.decode_tokens_per_busy_s == pytest.approx(4 / (0.5 * 2 / 302 + 0.5))
    assert stats.prefix_hashes == frozenset({1, 2})


def test_idle_time_is_not_busy_and_old_steps_leave_the_window():
    window = StatsWindow(window_s=10.0)
    window.observe(obs(0.0))
    window.observe(obs(5.0))  # idle: nothing ran between the records
    assert backend_stats(window, 5.0, total_kv_blocks=10, queued_prefill_tokens=0, prefix_hashes=frozenset()).busy_fraction == 0.0
    window.observe(obs(6.0, running=1, generated=1))
    window.observe(obs(7.0, running=1, generated=1))
    assert backend_stats(window, 7.0, total_kv_blocks=10, queued_prefill_tokens=0, prefix_hashes=frozenset()).busy_fraction == pytest.approx(0.1)
    assert backend_stats(window, 30.0, total_kv_blocks=10, queued_prefill_tokens=0, prefix_hashes=frozenset()).tokens_per_s == 0.0


def test_stats_before_the_first_step_are_zero():
    stats = backend_stats(StatsWindow(), 0.0, total_kv_blocks=0, queued_prefill_tokens=0, prefix_hashes=frozenset())
    assert (stats.running, stats.free_kv_blocks, stats.busy_fraction, stats.tokens_per_s) == (0, 0, 0.0, 0.0)


def test_observations_read_vllms_records():
    sched = SimpleNamespace(num_running_reqs=3, num_waiting_reqs=2, kv_cache_usage=0.4)
    it = SimpleNamespace(num_prompt_tokens=10, num_generation_tokens=3)
    first = observation(1.0, sched, it, None)
    assert first == StepObservation(1.0, 3, 2, 0.4, 10, 3)
    assert observation(2.0, None, it, first) == StepObservation(2.0, 3, 2, 0.4, 10, 3)
    assert observation(2.0, None, None, first) is None


def test_prefix_hashes_are_a_bounded_lru():
    lru = PrefixHashLRU(3)
    lru.add([1, 2, 3])
    lru.add([1])  # used again: now the most recent
    lru.add([4])
    assert lru.snapshot() == frozenset({3, 1, 4})
    lru.resize(1)
    assert lru.snapshot() == frozenset({4})


# -- metrics -----------------------------------------------------------------------------------
def test_metrics_text_keeps_only_vllm_families():
    registry = CollectorRegistry()
    Gauge("vllm:num_requests_running", "running", ["model_name"], registry=registry).labels("m").set(3)
    Counter("vllm:prompt_tokens", "prompt tokens", registry=registry).inc(5)
    Gauge("pavana_other", "not vLLM's", registry=registry).set(1)
    text = vllm_metrics_text(registry)
    assert 'vllm:num_requests_running{model_name="m"} 3.0' in text
    assert "vllm:prompt_tokens_total 5.0" in text
    assert "pavana_other" not in text
