"""Unit tests of the router's request shaping, error mapping and API keys (no Ray).

`router/prompt.py` is tested with the bundled default model's real tokenizer and hand-built
`ModelFacts`, so image expansion is checked without a vision checkpoint.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import io
import logging

import pytest
from PIL import Image

from router.auth import APIKeys
from router.errors import APIError, from_validation_errors, grpc_code_name, to_error_response, unwrap
from router.prompt import ModelFacts, PromptBuilder, model_facts
from router.protocol import ChatCompletionRequest, CompletionRequest
from workers.engine.block_manager import prefix_block_hashes
from workers.engine.default_model import DEFAULT_MODEL_NAME, ensure_default_model
from workers.engine.tokenizer import Tokenizer

MODEL = DEFAULT_MODEL_NAME
IMAGE_TOKEN_ID = 3  # the default tokenizer's <image>


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_dir(ensure_default_model())


def text_facts(max_model_len: int = 64) -> ModelFacts:
    return ModelFacts(name=MODEL, max_model_len=max_model_len, vocab_size=512, block_size=4)


def vision_facts(tokens: int = 5) -> ModelFacts:
    return ModelFacts(name=MODEL, max_model_len=256, vocab_size=512, block_size=4, image_token_id=IMAGE_TOKEN_ID, tokens_per_image=tokens)


def builder(tokenizer, facts: ModelFacts | None = None, **kwargs) -> PromptBuilder:
    return PromptBuilder(tokenizer, facts or text_facts(), **kwargs)


def completion(**fields) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": MODEL, "prompt": "Hello world", **fields})


def chat(content, **fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": MODEL, "messages": [{"role": "user", "content": content}], **fields})


def png_data_url(color=(255, 0, 0)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def refused(call, *, status: int = 400) -> APIError:
    with pytest.raises(APIError) as info:
        call()
    assert info.value.status == status, info.value.message
    return info.value


# -- completions ---------------------------------------------------------------------------------
def test_text_prompt_is_tokenized_with_bos_and_hashed_by_block(tokenizer):
    prepared = builder(tokenizer).completion(completion(max_tokens=7, temperature=0, seed=3, stop="."), "cmpl-1")
    request = prepared.request
    assert request.request_id == "cmpl-1"
    assert request.prompt_token_ids == tokenizer.encode("Hello world") and request.prompt_token_ids[0] == tokenizer.bos_token_id
    assert request.params.max_tokens == 7 and request.params.greedy and request.params.seed == 3 and request.params.stop == (".",)
    assert request.prefix_hashes == tuple(prefix_block_hashes(request.prompt_token_ids, 4))
    assert prepared.images == [] and request.images == ()


def test_token_id_prompts_and_a_batch_of_one_are_taken_as_they_are(tokenizer):
    assert builder(tokenizer).completion(completion(prompt=[5, 6, 7]), "r").request.prompt_token_ids == [5, 6, 7]
    assert builder(tokenizer).completion(completion(prompt=[[5, 6]]), "r").request.prompt_token_ids == [5, 6]
    assert builder(tokenizer).completion(completion(prompt=["Hello world"]), "r").request.prompt_token_ids == tokenizer.encode("Hello world")


def test_defaults_follow_openai(tokenizer):
    prepared = builder(tokenizer).completion(completion(), "r")
    params = prepared.request.params
    assert params.max_tokens == 16 and params.temperature == 1.0 and params.top_p == 1.0 and params.top_k == 0
    assert params.logprobs is None and params.prompt_logprobs is None and params.grammar is None
    assert (prepared.n, prepared.echo, prepared.tools, prepared.user, prepared.priority) == (1, None, None, None, None)


def test_every_sampling_field_reaches_the_engine(tokenizer):
    body = completion(
        max_tokens=8, temperature=0.5, top_p=0.9, top_k=5, min_p=0.1, seed=7, stop=["x"], stop_token_ids=[9, 10],
        presence_penalty=0.5, frequency_penalty=-0.5, repetition_penalty=1.2, min_tokens=2, logit_bias={"5": -100, " 7": 3.5},
        logprobs=3, ignore_eos=True,
    )
    params = builder(tokenizer).completion(body, "r").request.params
    assert (params.top_k, params.min_p, params.seed, params.stop, params.stop_token_ids) == (5, 0.1, 7, ("x",), (9, 10))
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty, params.min_tokens) == (0.5, -0.5, 1.2, 2)
    assert params.logit_bias == ((5, -100.0), (7, 3.5)) and params.logprobs == 3 and params.prompt_logprobs is None
    assert params.ignore_eos


def test_echo_sends_the_prompt_back_and_asks_for_prompt_logprobs_with_logprobs(tokenizer):
    prepared = builder(tokenizer).completion(completion(echo=True), "r")
    assert prepared.echo == "Hello world" and prepared.request.params.prompt_logprobs is None
    prepared = builder(tokenizer).completion(completion(prompt=[5, 6, 7], echo=True, logprobs=2), "r")
    assert prepared.echo == tokenizer.decode([5, 6, 7]) and prepared.request.params.prompt_logprobs == 2


def test_n_best_of_equal_to_n_user_and_priority_are_kept(tokenizer):
    prepared = builder(tokenizer).completion(completion(n=3, best_of=3, user="alice", priority=2), "r")
    assert (prepared.n, prepared.user, prepared.priority) == (3, "alice", 2)


def test_chat_logprobs_are_a_flag_and_a_count(tokenizer):
    assert builder(tokenizer).chat(chat("hi", logprobs=True), "r").request.params.logprobs == 0
    assert builder(tokenizer).chat(chat("hi", logprobs=True, top_logprobs=5), "r").request.params.logprobs == 5
    assert builder(tokenizer).chat(chat("hi", logprobs=False), "r").request.params.logprobs is None
    assert refused(lambda: builder(tokenizer).chat(chat("hi", top_logprobs=2), "r")).param == "top_logprobs"
    assert refused(lambda: builder(tokenizer).chat(chat("hi", logprobs=True, top_logprobs=21), "r")).param == "top_logprobs"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"store": True}, "store"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ],
)
def test_harmless_fields_are_refused_when_they_ask_for_something(tokenizer, fields, param):
    assert refused(lambda: builder(tokenizer).chat(chat("hi", **fields), "r")).param == param


def test_harmless_fields_are_accepted_with_their_defaults(tokenizer):
    body = chat("hi", store=False, metadata={"app": "x"}, service_tier="auto", user="bob", parallel_tool_calls=True)
    assert builder(tokenizer).chat(body, "r").user == "bob"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": [1, 512]}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"best_of": 3}, "best_of"),
        ({"n": 3, "best_of": 2}, "best_of"),
        ({"suffix": "end"}, "suffix"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": [512]}, "stop_token_ids"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": 1e-40}, "repetition_penalty"),
        ({"min_tokens": 17}, "min_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"logit_bias": {"512": 1}}, "logit_bias"),
        ({"logit_bias": {"five": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"seed": 2**64}, "seed"),
        ({"seed": 2**64 - 2, "n": 3}, "seed"),
        ({"user": "u" * 257}, "user"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_bad_completion_fields_are_refused_naming_the_field(tokenizer, fields, param):
    err = refused(lambda: builder(tokenizer).completion(completion(**fields), "r"))
    assert err.param == param and err.type == "invalid_request_error"
    assert err.message.startswith(param)


def test_unknown_model_is_a_404(tokenizer):
    err = refused(lambda: builder(tokenizer).completion(completion(model="gpt-9"), "r"), status=404)
    assert err.code == "model_not_found" and err.param == "model" and "gpt-9" in err.message


def test_prompt_over_the_context_is_refused(tokenizer):
    long_prompt = list(range(10, 74))  # 64 tokens: fills the whole context of 64
    err = refused(lambda: builder(tokenizer).completion(completion(prompt=long_prompt), "r"))
    assert err.param == "prompt" and err.code == "context_length_exceeded" and "64" in err.message


def test_max_tokens_beyond_the_context_left_is_refused(tokenizer):
    prompt = list(range(10, 60))  # 50 tokens of 64: 14 left
    assert builder(tokenizer).completion(completion(prompt=prompt, max_tokens=14), "r").request.params.max_tokens == 14
    err = refused(lambda: builder(tokenizer).completion(completion(prompt=prompt, max_tokens=15), "r"))
    assert err.param == "max_tokens" and "at most 14" in err.message


# -- chat ------------------------------------------------------------------------------------------
def test_chat_uses_the_template_and_fills_the_context_by_default(tokenizer):
    request = builder(tokenizer).chat(chat("hi", temperature=0), "chatcmpl-1").request
    assert request.prompt_token_ids == tokenizer.encode_chat([{"role": "user", "content": "hi"}])
    assert request.params.max_tokens == 64 - len(request.prompt_token_ids)


def test_max_completion_tokens_wins_over_max_tokens(tokenizer):
    request = builder(tokenizer).chat(chat("hi", max_tokens=9, max_completion_tokens=4), "r").request
    assert request.params.max_tokens == 4
    err = refused(lambda: builder(tokenizer).chat(chat("hi", max_completion_tokens=0), "r"))
    assert err.param == "max_completion_tokens"


def test_text_parts_are_joined(tokenizer):
    request = builder(tokenizer).chat(chat([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]), "r").request
    assert request.prompt_token_ids == tokenizer.encode_chat([{"role": "user", "content": "a\nb"}])


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_json_modes_become_grammars_and_tools_are_rendered_into_the_prompt(tokenizer):
    assert builder(tokenizer).chat(chat("hi", response_format={"type": "json_object"}), "r").request.params.grammar
    assert builder(tokenizer).chat(chat("hi", response_format={"type": "text"}), "r").request.params.grammar is None
    with_tools = builder(tokenizer, text_facts(512)).chat(chat("hi", tools=[WEATHER]), "r")
    plain = builder(tokenizer, text_facts(512)).chat(chat("hi"), "r")
    assert with_tools.tools is not None and not with_tools.tools.forced and with_tools.request.params.grammar is None
    assert len(with_tools.request.prompt_token_ids) > len(plain.request.prompt_token_ids)
    forced = builder(tokenizer, text_facts(512)).chat(chat("hi", tools=[WEATHER], tool_choice="required"), "r")
    assert forced.tools.forced and forced.request.params.grammar
    none = builder(tokenizer, text_facts(512)).chat(chat("hi", tools=[WEATHER], tool_choice="none"), "r")
    assert none.tools is None and none.request.prompt_token_ids == plain.request.prompt_token_ids


def test_a_json_format_with_tools_is_refused(tokenizer):
    body = chat("hi", tools=[WEATHER], response_format={"type": "json_object"})
    assert refused(lambda: builder(tokenizer, text_facts(512)).chat(body, "r")).param == "response_format"


# -- images ----------------------------------------------------------------------------------------
def test_images_expand_into_placeholder_runs_keyed_by_content(tokenizer):
    red, blue = png_data_url((255, 0, 0)), png_data_url((0, 0, 255))
    content = [{"type": "text", "text": "look"}, image_part(red), {"type": "text", "text": "and"}, image_part(blue)]
    prepared = builder(tokenizer, vision_facts(tokens=5)).chat(chat(content), "r")
    request = prepared.request
    unexpanded = tokenizer.encode_chat([{"role": "user", "content": "look\n<image>\nand\n<image>"}])
    assert len(request.prompt_token_ids) == len(unexpanded) + 2 * 4
    assert [(img.length) for img in request.images] == [5, 5]
    for image, data in zip(request.images, prepared.images):
        assert request.prompt_token_ids[image.offset : image.offset + 5] == [IMAGE_TOKEN_ID] * 5
        assert image.content_hash == hashlib.sha256(data).hexdigest()
    assert prepared.images[0] == base64.b64decode(red.split(",", 1)[1])
    assert request.prompt_token_ids.count(IMAGE_TOKEN_ID) == 10
    # Affinity hashes stop before the first image: later blocks are keyed by the image too.
    assert request.prefix_hashes == tuple(prefix_block_hashes(request.prompt_token_ids[: request.images[0].offset], 4))


def test_an_image_token_typed_in_text_is_refused(tokenizer):
    content = [{"type": "text", "text": "<image> here"}, image_part(png_data_url())]
    err = refused(lambda: builder(tokenizer, vision_facts()).chat(chat(content), "r"))
    assert err.param == "messages" and "placeholders" in err.message


def test_images_need_a_vision_tower(tokenizer):
    err = refused(lambda: builder(tokenizer).chat(chat([image_part(png_data_url())]), "r"))
    assert err.code == "images_not_supported" and err.param == "messages[0].content[0].image_url"


def test_remote_image_urls_are_refused_whether_or_not_enabled(tokenizer):
    content = [image_part("https://example.com/cat.png")]
    err = refused(lambda: builder(tokenizer, vision_facts()).chat(chat(content), "r"))
    assert err.code == "remote_image_urls_disabled" and "disabled" in err.message
    err = refused(lambda: builder(tokenizer, vision_facts(), allow_remote_image_urls=True).chat(chat(content), "r"))
    assert err.code == "remote_image_urls_unsupported" and "not supported" in err.message


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,!!!not-base64!!!",
        "data:image/png;base64," + base64.b64encode(b"definitely not a png").decode(),
        "data:text/plain;base64,aGVsbG8=",
        "data:image/png,rawbytes",
        "data:image/png;base64",
        "file:///etc/passwd",
    ],
)
def test_corrupt_image_urls_are_refused(tokenizer, url):
    err = refused(lambda: builder(tokenizer, vision_facts()).chat(chat([image_part(url)]), "r"))
    assert err.param == "messages[0].content[0].image_url"


def test_model_facts_use_the_engine_context_rule():
    from workers.vision.encoder import LlavaVisionFacts, has_vision_tower

    path = ensure_default_model()
    facts = model_facts(path, name=MODEL, block_size=16, num_kv_blocks=2048)
    assert facts.max_model_len == 2048 and facts.vocab_size == 512  # max positions
    if has_vision_tower(path):  # image placement as the vision pool sees it
        vision = LlavaVisionFacts.from_dir(path)
        assert (facts.image_token_id, facts.tokens_per_image) == (vision.image_token_id, vision.num_image_tokens)
    else:
        assert not facts.vision
    assert model_facts(path, name=MODEL, block_size=16, num_kv_blocks=8).max_model_len == 128  # KV capacity
    assert model_facts(path, name=MODEL, block_size=16, num_kv_blocks=2048, max_model_len=100).max_model_len == 100


# -- errors ----------------------------------------------------------------------------------------
def test_value_errors_are_400s_naming_their_field():
    err = to_error_response(ValueError("top_p: must be in (0, 1], got 2"))
    assert err.status == 400
    assert err.body == {"error": {"message": "top_p: must be in (0, 1], got 2", "type": "invalid_request_error", "param": "top_p", "code": None}}


def test_ray_wrapped_errors_report_the_original():
    class Wrapped(ValueError):  # what RayTaskError.as_instanceof_cause() builds
        def __init__(self, cause):
            super().__init__("Traceback ... ray internals")
            self.cause = cause

    original = ValueError("prompt: too long")
    assert unwrap(Wrapped(original)) is original
    assert to_error_response(Wrapped(original)).message == "prompt: too long"


def test_overload_is_a_503_with_retry_after():
    from workers.engine.async_engine import EngineOverloaded

    err = to_error_response(EngineOverloaded("engine: 1024 requests in flight", retry_after_s=2.5))
    assert err.status == 503 and err.headers == {"Retry-After": "3"} and err.body["error"]["type"] == "overloaded_error"
    assert to_error_response(OverflowError("engine: queue full")).headers == {"Retry-After": "1"}
    BackPressureError = type("BackPressureError", (Exception,), {})
    assert to_error_response(BackPressureError("full")).status == 503


def test_unexpected_errors_are_500s_logged_without_their_text(caplog):
    with caplog.at_level(logging.ERROR, logger="router.errors"):
        err = to_error_response(KeyError("secret internals"))
    assert err.status == 500 and "secret" not in err.message
    assert any("unexpected error" in r.message for r in caplog.records)


def test_api_errors_pass_through_with_their_headers():
    err = to_error_response(APIError(401, "no key", type="authentication_error", code="invalid_api_key", headers={"X": "1"}))
    assert (err.status, err.headers, err.body["error"]["code"]) == (401, {"X": "1"}, "invalid_api_key")


def test_validation_errors_name_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"model": MODEL})
    err = from_validation_errors(info.value.errors())
    assert err.status == 400 and err.param == "messages" and "Field required" in err.message
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate({"model": MODEL, "prompt": "x", "max_tokens": "ten"})
    assert from_validation_errors(info.value.errors()).param == "max_tokens"
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate_json(b'{"model": ')
    err = from_validation_errors(info.value.errors())
    assert err.param is None and "not valid JSON" in err.message


def test_grpc_codes_follow_http_status():
    assert [grpc_code_name(s) for s in (400, 401, 404, 503, 500)] == ["INVALID_ARGUMENT", "UNAUTHENTICATED", "NOT_FOUND", "UNAVAILABLE", "INTERNAL"]


# -- API keys --------------------------------------------------------------------------------------
def test_no_keys_means_an_open_api():
    keys = APIKeys([])
    assert not keys.enabled
    keys.check_http(None)
    keys.check_grpc([])


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer wrong", "Basic k1", "k1"])
def test_http_needs_a_bearer_key(header):
    err = refused(lambda: APIKeys(["k1", "k2"]).check_http(header), status=401)
    assert err.type == "authentication_error"


def test_any_configured_key_is_accepted():
    keys = APIKeys(["k1", "k2"])
    keys.check_http("Bearer k1")
    keys.check_http("bearer k2")
    keys.check_grpc([("x-api-key", "k2")])
    keys.check_grpc([("authorization", "Bearer k1")])
    refused(lambda: keys.check_grpc([("x-api-key", "k3")]), status=401)
    refused(lambda: keys.check_grpc([("application", "pavana")]), status=401)


# -- the ingress's SSE writer -------------------------------------------------------------------
def test_an_error_after_the_stream_began_ends_it_with_an_error_event():
    """The SSE writer given a stream that fails midway: an error event, then [DONE]."""
    from router.formats import CompletionFormat
    from router.ingress import Ingress
    from workers.requests import TokenChunk

    async def failing():
        yield 0, TokenChunk("r", [7], "b")
        raise RuntimeError("decode replica died")

    async def collect():
        fmt = CompletionFormat("r", "m", 3)
        first = (0, TokenChunk("r", [6], "a"))
        return [event async for event in Ingress._sse_stream(fmt, first, failing(), True)]

    events = asyncio.run(collect())
    assert [json.loads(e[6:])["choices"][0]["text"] for e in events[:2]] == ["a", "b"]
    assert json.loads(events[2][6:])["error"]["type"] == "server_error"
    assert events[3] == "data: [DONE]\n\n"
