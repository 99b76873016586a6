"""Unit tests of the gRPC request translation (`router/grpc_messages.py`) and the rich error
model (`router/grpc_errors.py`), without Ray: a proto request must reach the engine exactly as
the equivalent HTTP body does, and every refusal must name its field."""

from __future__ import annotations

import base64
import io
import json

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from PIL import Image

from router.admission import Overloaded
from router.errors import APIError, invalid_request
from router.grpc_errors import (
    RETRY_AFTER_KEY,
    STATUS_DETAILS_KEY,
    STREAM_STATUS_MARKER,
    grpc_error,
    restore_stream_status,
    stream_failure_details,
)
from router.grpc_messages import CHAT, COMPLETION, openai_body
from router.prompt import ModelFacts, PromptBuilder
from router.proto import pavana_pb2 as pb
from router.protocol import ChatCompletionRequest, CompletionRequest
from workers.engine.default_model import DEFAULT_MODEL_NAME, ensure_default_model
from workers.engine.tokenizer import Tokenizer

MODEL = DEFAULT_MODEL_NAME
CONTEXT = 64


@pytest.fixture(scope="module")
def prompts() -> PromptBuilder:
    facts = ModelFacts(name=MODEL, max_model_len=CONTEXT, vocab_size=512, block_size=4, image_token_id=3, tokens_per_image=5)
    return PromptBuilder(Tokenizer.from_dir(ensure_default_model()), facts)


def prepared(prompts: PromptBuilder, request: pb.GenerateRequest):
    endpoint, body = openai_body(request, MODEL)
    if endpoint == CHAT:
        return prompts.chat(ChatCompletionRequest.model_validate(body), "r")
    return prompts.completion(CompletionRequest.model_validate(body), "r")


def refused(request: pb.GenerateRequest) -> APIError:
    with pytest.raises(APIError) as info:
        openai_body(request, MODEL)
    assert info.value.status == 400
    return info.value


def png(color=(0, 128, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


# -- defaults: the same as HTTP ----------------------------------------------------------------
def test_unset_fields_take_openai_defaults_as_over_http(prompts):
    text = prepared(prompts, pb.GenerateRequest(text="Hello world")).request
    assert text.params.temperature == 1.0 and text.params.max_tokens == 16 and text.params.top_p == 1.0
    chat = prepared(prompts, pb.GenerateRequest(chat=pb.Chat(messages=[pb.ChatMessage(role="user", content="Hi")]))).request
    assert chat.params.temperature == 1.0
    assert chat.params.max_tokens == CONTEXT - chat.num_prompt_tokens  # as many as the context allows
    http = prompts.chat(ChatCompletionRequest.model_validate({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}), "r").request
    assert chat.params == http.params and chat.prompt_token_ids == http.prompt_token_ids


def test_set_fields_reach_the_body_under_their_openai_names():
    sampling = pb.SamplingParams(
        max_tokens=5, temperature=0.0, top_p=0.5, top_k=3, seed=7, stop=["."], ignore_eos=True, n=2,
        presence_penalty=0.5, frequency_penalty=-0.5, repetition_penalty=1.1, min_p=0.05, min_tokens=2,
        stop_token_ids=[9], logit_bias={12: -100.0, 4: 2.0}, logprobs=True, top_logprobs=3,
    )  # fmt: skip
    endpoint, body = openai_body(pb.GenerateRequest(text="x", sampling=sampling, echo=True, priority=1, user="u-1"), MODEL)
    assert endpoint == COMPLETION
    assert body == {
        "model": MODEL, "prompt": "x", "max_tokens": 5, "temperature": 0.0, "top_p": 0.5, "top_k": 3, "seed": 7, "n": 2,
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": pytest.approx(1.1), "min_p": pytest.approx(0.05),
        "min_tokens": 2, "stop": ["."], "ignore_eos": True, "stop_token_ids": [9], "logit_bias": {"4": 2.0, "12": -100.0},
        "logprobs": 3, "echo": True, "priority": 1, "user": "u-1",
    }  # fmt: skip
    # Chat takes OpenAI's chat shape of the same two fields.
    _, chat = openai_body(pb.GenerateRequest(chat=pb.Chat(messages=[pb.ChatMessage(role="user", content="x")]), sampling=sampling), MODEL)
    assert chat["logprobs"] is True and chat["top_logprobs"] == 3
    _, plain = openai_body(pb.GenerateRequest(text="x", sampling=pb.SamplingParams(logprobs=True)), MODEL)
    assert plain["logprobs"] == 0


def test_tools_response_format_and_history_become_openai_json():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    request = pb.GenerateRequest(
        chat=pb.Chat(messages=[
            pb.ChatMessage(role="user", content="Weather in Paris?", name="ann"),
            pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(id="call_1", function=pb.FunctionCall(name="weather", arguments='{"city": "Paris"}'))]),
            pb.ChatMessage(role="tool", content="sunny", tool_call_id="call_1"),
        ]),
        tools=[pb.Tool(function=pb.FunctionDefinition(name="weather", description="Today's weather", parameters=json.dumps(schema), strict=True))],
        tool_choice=pb.ToolChoice(function_name="weather"),
        response_format=pb.ResponseFormat(type="json_schema", json_schema=pb.JsonSchema(name="w", schema=json.dumps(schema), strict=True)),
    )  # fmt: skip
    _, body = openai_body(request, MODEL)
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris?", "name": "ann"},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]  # fmt: skip
    assert body["tools"] == [{"type": "function", "function": {"name": "weather", "description": "Today's weather", "parameters": schema, "strict": True}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "w", "schema": schema, "strict": True}}
    assert openai_body(pb.GenerateRequest(text="x", tool_choice=pb.ToolChoice(mode="required")), MODEL)[1]["tool_choice"] == "required"


def test_an_image_as_bytes_is_the_same_image_as_its_data_url(prompts):
    data = png()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    parts = {
        "bytes": pb.Image(data=data, mime_type="image/png"),
        "bytes without a type": pb.Image(data=data),
        "url": pb.Image(url=url),
    }
    results = []
    for image in parts.values():
        message = pb.ChatMessage(role="user", parts=[pb.ContentPart(text="What is it?"), pb.ContentPart(image=image)])
        results.append(prepared(prompts, pb.GenerateRequest(chat=pb.Chat(messages=[message]))))
    assert all(r.images == [data] for r in results)
    assert len({tuple(r.request.prompt_token_ids) for r in results}) == 1
    assert results[0].request.prompt_token_ids.count(3) == 5  # the placeholder, expanded


def test_a_client_that_sends_empty_content_as_no_field_still_sends_an_empty_text():
    # `content` gained presence; a client built before that sends nothing for "".
    old = pb.ChatMessage.FromString(pb.ChatMessage(role="user").SerializeToString())
    assert openai_body(pb.GenerateRequest(chat=pb.Chat(messages=[old])), MODEL)[1]["messages"] == [{"role": "user", "content": ""}]


# -- refusals name the field -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("request_", "param", "says"),
    [
        (pb.GenerateRequest(), "input", "set one of text, token_ids or chat"),
        (pb.GenerateRequest(text="x", sampling=pb.SamplingParams(top_logprobs=2)), "top_logprobs", "set logprobs too"),
        (pb.GenerateRequest(chat=pb.Chat(messages=[pb.ChatMessage(role="user", content="a", parts=[pb.ContentPart(text="b")])])), "messages[0].content", "not both"),
        (pb.GenerateRequest(chat=pb.Chat(messages=[pb.ChatMessage(role="user", parts=[pb.ContentPart()])])), "messages[0].content[0]", "set text or image"),
        (pb.GenerateRequest(chat=pb.Chat(messages=[pb.ChatMessage(role="user", parts=[pb.ContentPart(image=pb.Image())])])), "messages[0].content[0].image_url", "set url or data"),
        (pb.GenerateRequest(chat=pb.Chat(messages=[pb.ChatMessage(role="user", parts=[pb.ContentPart(image=pb.Image(data=b""))])])), "messages[0].content[0].image_url", "no bytes"),
        (pb.GenerateRequest(text="x", response_format=pb.ResponseFormat(type="json_schema", json_schema=pb.JsonSchema(name="s", schema="{not json"))), "response_format.json_schema.schema", "not valid JSON"),
        (pb.GenerateRequest(text="x", tools=[pb.Tool(function=pb.FunctionDefinition(name="f", parameters="[1,"))]), "tools[0].function.parameters", "not valid JSON"),
        (pb.GenerateRequest(text="x", tool_choice=pb.ToolChoice()), "tool_choice", "set mode or function_name"),
    ],
    ids=["no input", "top_logprobs alone", "content and parts", "empty part", "empty image", "image without bytes", "schema not JSON", "parameters not JSON", "empty tool choice"],
)
def test_what_only_the_proto_can_get_wrong_is_refused_naming_the_field(request_, param, says):
    err = refused(request_)
    assert err.param == param and says in err.message and err.message.startswith(param)


def test_fields_this_server_does_not_know_are_refused_not_dropped():
    newer = pb.GenerateRequest(text="hi").SerializeToString() + bytes([0x98, 0x06, 0x07])  # field 99, varint
    err = refused(pb.GenerateRequest.FromString(newer))
    assert err.param == "#99" and "pavana.v1.GenerateRequest has no field number 99" in err.message
    nested = pb.GenerateRequest(chat=pb.Chat(messages=[pb.ChatMessage(role="user", content="a"), pb.ChatMessage(role="user", content="b")]))
    raw = bytearray(nested.chat.messages[1].SerializeToString() + bytes([0xA0, 0x01, 0x01]))  # field 20 of ChatMessage
    nested.chat.messages[1].MergeFromString(bytes(raw))
    assert refused(nested).param == "chat.messages[1].#20"
    wrong_type = bytes([0x10, 0x07])  # `text` (2) sent as a varint
    err = refused(pb.GenerateRequest.FromString(wrong_type))
    assert err.param == "text" and "sent as a varint, but the field is a string" in err.message


# -- the rich error model ----------------------------------------------------------------------
def unpacked(status: status_pb2.Status, kind):
    found = [d for d in status.details if d.Is(kind.DESCRIPTOR)]
    if not found:
        return None
    message = kind()
    found[0].Unpack(message)
    return message


def test_a_bad_field_is_invalid_argument_with_a_bad_request_naming_it():
    error = grpc_error(invalid_request("temperature: must be in [0, 2], got 9.0", param="temperature"))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert error.status.message == error.message == "temperature: must be in [0, 2], got 9.0"
    [violation] = unpacked(error.status, error_details_pb2.BadRequest).field_violations
    assert violation.field == "temperature" and "got 9.0" in violation.description
    assert dict(error.trailing_metadata)[STATUS_DETAILS_KEY] == error.status.SerializeToString()


def test_overload_carries_retry_info_and_retry_after():
    error = grpc_error(Overloaded("Too many requests in flight", retry_after_s=3))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert unpacked(error.status, error_details_pb2.RetryInfo).retry_delay.seconds == 3
    assert dict(error.trailing_metadata)[RETRY_AFTER_KEY] == "3"
    assert unpacked(error.status, error_details_pb2.ErrorInfo).domain == "pavana"

    class EngineOverloaded(Exception):
        retry_after_s = 0.2

    busy = grpc_error(EngineOverloaded("queue full"))
    assert busy.code == grpc.StatusCode.UNAVAILABLE and dict(busy.trailing_metadata)[RETRY_AFTER_KEY] == "1"


def test_an_internal_error_says_nothing_of_its_cause():
    error = grpc_error(RuntimeError("secret path /etc/x"))
    assert error.code == grpc.StatusCode.INTERNAL and "secret" not in error.message
    assert b"secret" not in error.status.SerializeToString() and unpacked(error.status, error_details_pb2.BadRequest) is None


def test_long_messages_are_clipped_to_fit_the_trailers():
    error = grpc_error(invalid_request("prompt: " + "\u00e9" * 5000, param="prompt"))
    assert len(error.message.encode()) <= 1000 and len(error.status.SerializeToString()) < 2000
    assert len(stream_failure_details(error)) < 4096  # Ray clips details there


class FakeContext:
    """The part of gRPC's servicer context the proxy side uses."""

    def __init__(self, details: str, trailing=()):
        self._details, self._trailing = details, tuple(trailing)

    def details(self):
        return self._details

    def set_details(self, details):
        self._details = details

    def trailing_metadata(self):
        return self._trailing

    def set_trailing_metadata(self, trailing):
        self._trailing = tuple(trailing)


def test_a_failed_streams_status_is_restored_from_its_details():
    error = grpc_error(Overloaded("busy", retry_after_s=2))
    context = FakeContext(stream_failure_details(error), trailing=[("request_id", "abc")])
    assert context.details().startswith(STREAM_STATUS_MARKER)
    restore_stream_status(context)
    assert context.details() == error.message
    assert context.trailing_metadata() == (("request_id", "abc"), *error.trailing_metadata)
    plain = FakeContext("just a message")
    restore_stream_status(plain)
    assert plain.details() == "just a message" and plain.trailing_metadata() == ()
