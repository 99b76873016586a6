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
from router.formats import ChatFormat, CompletionFormat, format_for
from router.grpc_messages import CHAT, COMPLETION, Answer, openai_body
from router.logprobs import LOGPROB_FLOOR
from router.prompt import ModelFacts, PromptBuilder
from router.proto import pavana_pb2 as pb
from router.protocol import ChatCompletionRequest, CompletionRequest
from workers.engine.default_model import DEFAULT_MODEL_NAME, ensure_default_model
from workers.engine.tokenizer import Tokenizer
from workers.requests import TokenChunk

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
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1, "min_p": 0.05,
        "min_tokens": 2, "stop": ["."], "ignore_eos": True, "stop_token_ids": [9], "logit_bias": {"4": 2.0, "12": -100.0},
        "logprobs": 3, "echo": True, "priority": 1, "user": "u-1",
    }  # fmt: skip
    # Chat takes OpenAI's chat shape of the same two fields.
    _, chat = openai_body(pb.GenerateRequest(chat=pb.Chat(messages=[pb.ChatMessage(role="user", content="x")]), sampling=sampling), MODEL)
    assert chat["logprobs"] is True and chat["top_logprobs"] == 3
    _, plain = openai_body(pb.GenerateRequest(text="x", sampling=pb.SamplingParams(logprobs=True)), MODEL)
    assert plain["logprobs"] == 0


def test_a_float32_field_is_the_decimal_the_client_wrote():
    _, body = openai_body(pb.GenerateRequest(text="x", sampling=pb.SamplingParams(temperature=0.7, top_p=0.9, logit_bias={3: 0.1})), MODEL)
    assert (body["temperature"], body["top_p"], body["logit_bias"]) == (0.7, 0.9, {"3": 0.1})  # not 0.699999988


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


# -- answers: HTTP's formats in gRPC's shape ----------------------------------------------------
@pytest.fixture(scope="module")
def texts():
    from router.logprobs import TokenTexts

    return TokenTexts(Tokenizer.from_dir(ensure_default_model()))


def chunk(text: str, ids: list[int], *, finished: bool = False, reason: str | None = None, logprobs=(), prompt_logprobs=()) -> TokenChunk:
    return TokenChunk("r", ids, text, finished=finished, finish_reason=reason, logprobs=tuple(logprobs), prompt_logprobs=tuple(prompt_logprobs))


def answer_for(prompts, request: pb.GenerateRequest, texts) -> Answer:
    endpoint, body = openai_body(request, MODEL)
    kind = ChatFormat if endpoint == CHAT else CompletionFormat
    model = ChatCompletionRequest if endpoint == CHAT else CompletionRequest
    prepared_ = prompts.chat(model.model_validate(body), "r") if endpoint == CHAT else prompts.completion(model.model_validate(body), "r")
    return Answer(format_for(kind, prepared_, MODEL, texts), prepared_)


def test_n_choices_streamed_add_up_to_the_unary_answer_with_usage_on_the_last_message(prompts, texts):
    request = pb.GenerateRequest(text="Hello", sampling=pb.SamplingParams(n=2, max_tokens=3))
    arrivals = [(0, chunk("a", [10])), (1, chunk("x", [20])), (0, chunk("b", [11], finished=True, reason="length")),
                (1, chunk("y", [21])), (1, chunk("z", [22], finished=True, reason="stop"))]  # fmt: skip
    unary, streamed = answer_for(prompts, request, texts), answer_for(prompts, request, texts)
    for index, c in arrivals:
        unary.add(index, c)
    messages = [streamed.message(index, c) for index, c in arrivals]
    whole = unary.response()
    assert [(c.index, c.text, list(c.token_ids), c.finish_reason) for c in whole.choices] == [(0, "ab", [10, 11], "length"), (1, "xyz", [20, 21, 22], "stop")]
    assert not whole.text and not whole.token_ids  # n > 1: only `choices` speaks
    assert whole.usage.completion_tokens == 5 and whole.usage.prompt_tokens == unary.fmt.num_prompt_tokens
    assert [m.HasField("usage") for m in messages] == [False, False, False, False, True]
    assert messages[-1].usage == whole.usage
    joined: dict[int, str] = {}
    for m in messages:
        [c] = m.choices
        joined[c.index] = joined.get(c.index, "") + c.text
    assert joined == {0: "ab", 1: "xyz"}


def test_one_choice_fills_the_top_level_fields_too(prompts, texts):
    answer = answer_for(prompts, pb.GenerateRequest(text="Hello", sampling=pb.SamplingParams(max_tokens=2)), texts)
    message = answer.message(0, chunk("hi", [7], finished=True, reason="stop"))
    assert (message.text, list(message.token_ids), message.finish_reason) == ("hi", [7], "stop") and message.HasField("usage")


def test_logprobs_carry_token_ids_and_text_and_echo_adds_the_prompts(prompts, texts):
    from workers.requests import TokenLogprob

    request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 40, 41]), echo=True, sampling=pb.SamplingParams(max_tokens=2, logprobs=True, top_logprobs=2))
    answer = answer_for(prompts, request, texts)
    first = TokenLogprob(50, -0.5, ((50, -0.5), (51, -1.5)))
    prompt = (None, TokenLogprob(40, -2.0, ()), TokenLogprob(41, float("-inf"), ()))
    answer.add(0, chunk(texts.token_str(50), [50], logprobs=[first], prompt_logprobs=prompt))
    answer.add(0, chunk("", [51], finished=True, reason="length", logprobs=[TokenLogprob(51, -1.0, ((51, -1.0), (50, -3.0)))]))
    [choice] = answer.response().choices
    assert choice.text.startswith(answer.fmt.echo) and list(choice.token_ids) == [50, 51]
    assert [(e.token_id, e.logprob, [t.token_id for t in e.top_logprobs]) for e in choice.logprobs] == [(50, -0.5, [50, 51]), (51, -1.0, [51, 50])]
    assert choice.logprobs[0].token == texts.token_str(50) and choice.logprobs[0].bytes == texts.token_bytes(50)
    assert [e.token_id for e in choice.prompt_logprobs] == [1, 40, 41]
    assert not choice.prompt_logprobs[0].HasField("logprob") and choice.prompt_logprobs[1].logprob == -2.0
    assert choice.prompt_logprobs[2].logprob == LOGPROB_FLOOR  # a ruled-out token, as HTTP reports it


def test_a_forced_tool_call_is_read_from_the_output_unary_and_streamed(texts):
    facts = ModelFacts(name=MODEL, max_model_len=2048, vocab_size=512, block_size=4)
    prompts = PromptBuilder(Tokenizer.from_dir(ensure_default_model()), facts)  # room for the tools prompt
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    request = pb.GenerateRequest(
        chat=pb.Chat(messages=[pb.ChatMessage(role="user", content="Weather?")]), sampling=pb.SamplingParams(max_tokens=40),
        tools=[pb.Tool(function=pb.FunctionDefinition(name="weather", parameters=json.dumps(parameters)))], tool_choice=pb.ToolChoice(mode="required"),
    )  # fmt: skip
    pieces = ["<tool_call>\n", '{"name": "weather", ', '"arguments": {"city": ', '"Paris"}}', "\n</tool_call>"]
    unary, streamed = answer_for(prompts, request, texts), answer_for(prompts, request, texts)
    messages = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        unary.add(0, chunk(piece, [100 + i], finished=last, reason="stop" if last else None))
        messages.append(streamed.message(0, chunk(piece, [100 + i], finished=last, reason="stop" if last else None)))
    [choice] = unary.response().choices
    assert choice.finish_reason == "tool_calls" and choice.text == ""
    [call] = choice.tool_calls
    assert call.function.name == "weather" and json.loads(call.function.arguments) == {"city": "Paris"} and call.id.startswith("call_")
    calls = [c for m in messages for c in m.choices[0].tool_calls]
    assert calls[0].id and calls[0].function.name == "weather"
    assert json.loads("".join(c.function.arguments for c in calls)) == {"city": "Paris"}
    assert messages[-1].finish_reason == "tool_calls" and [i for m in messages for i in m.token_ids] == list(choice.token_ids)
