"""Pavana's gRPC API through Ray Serve's gRPC proxy, with the generated client, against the same
live application the HTTP tests use: the same answers as HTTP for the same request, the same
refusals with Google's rich error details, and server reflection."""

from __future__ import annotations

import json

import grpc
import httpx
import jsonschema
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from router.proto import pavana_pb2 as pb
from router.proto import pavana_pb2_grpc
from tests.reliability.hostile_inputs import photo_png
from tests.router.conftest import API_KEY, Served

pytestmark = pytest.mark.ray

APP = ("application", "pavana")
AUTH = [APP, ("x-api-key", API_KEY)]


@pytest.fixture(scope="module")
def channel(served: Served):
    with grpc.insecure_channel(served.grpc_address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel


@pytest.fixture(scope="module")
def stub(channel) -> pavana_pb2_grpc.PavanaStub:
    return pavana_pb2_grpc.PavanaStub(channel)


@pytest.fixture(scope="module")
def http(served: Served):
    with httpx.Client(base_url=served.http_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as client:
        yield client


def greedy(max_tokens: int, **extra) -> pb.SamplingParams:
    return pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, **extra)


def chat(*messages: pb.ChatMessage) -> pb.Chat:
    return pb.Chat(messages=list(messages))


def user(text: str) -> pb.ChatMessage:
    return pb.ChatMessage(role="user", content=text)


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def detail(error: grpc.RpcError, kind):
    """The detail of type `kind` in the error's `google.rpc.Status`, or None."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status with {error.code()} {error.details()!r}"
    for packed in status.details:
        if packed.Is(kind.DESCRIPTOR):
            message = kind()
            packed.Unpack(message)
            return message
    return None


def unary_and_stream(stub, request, metadata=AUTH):
    """Both methods' refusals of the same request."""
    return [
        refusal(lambda: stub.Generate(request, metadata=metadata, timeout=60)),
        refusal(lambda: list(stub.GenerateStream(request, metadata=metadata, timeout=60))),
    ]


# -- answers -------------------------------------------------------------------------------------
def test_unary_generate_equals_the_engine_run_directly(stub, direct_engine):
    from workers.engine.sampling import SamplingParams

    prompt = "The wind moved over the hills"
    response = stub.Generate(pb.GenerateRequest(text=prompt, sampling=greedy(16)), metadata=AUTH, timeout=60)
    [direct_ids] = direct_engine.generate([direct_engine.tokenizer.encode(prompt)], SamplingParams(max_tokens=16, temperature=0))
    assert list(response.token_ids) == direct_ids
    assert response.text == direct_engine.tokenizer.decode(direct_ids)
    assert response.finish_reason in ("stop", "length") and response.id.startswith("cmpl-")
    assert response.usage.completion_tokens == len(direct_ids)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    [choice] = response.choices  # the top-level fields mirror the one choice
    assert (choice.index, choice.text, list(choice.token_ids), choice.finish_reason) == (0, response.text, direct_ids, response.finish_reason)


def test_streaming_generate_adds_up_to_the_unary_answer(stub):
    request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 40, 41, 42, 43]), sampling=greedy(12, ignore_eos=True))
    whole = stub.Generate(request, metadata=AUTH, timeout=60)
    messages = list(stub.GenerateStream(request, metadata=AUTH, timeout=60))
    assert [i for m in messages for i in m.token_ids] == list(whole.token_ids) and len(whole.token_ids) == 12
    assert [i for m in messages for c in m.choices for i in c.token_ids] == list(whole.token_ids)
    assert "".join(m.text for m in messages) == whole.text
    assert [m.finish_reason for m in messages if m.finish_reason] == ["length"]
    last = messages[-1]
    assert last.usage.prompt_tokens == 5 and last.usage.completion_tokens == 12


def test_chat_input(stub):
    response = stub.Generate(pb.GenerateRequest(chat=chat(user("Hello")), sampling=greedy(5)), metadata=AUTH, timeout=60)
    assert response.id.startswith("chatcmpl-") and 1 <= response.usage.completion_tokens <= 5


def test_an_unset_temperature_samples_at_1_as_over_http(stub, http, served):
    """Two unseeded runs may or may not differ; a seeded run shows the temperature: unset over
    gRPC it draws what HTTP draws with the temperature unset, and what 1.0 draws."""
    prompt, seed = "A storm came in from the sea", 1234
    sampling = pb.SamplingParams(max_tokens=8, seed=seed, ignore_eos=True)
    unset = stub.Generate(pb.GenerateRequest(text=prompt, sampling=sampling), metadata=AUTH, timeout=60)
    sampling.temperature = 1.0
    at_one = stub.Generate(pb.GenerateRequest(text=prompt, sampling=sampling), metadata=AUTH, timeout=60)
    over_http = http.post("/completions", json={"model": served.model, "prompt": prompt, "max_tokens": 8, "seed": seed, "ignore_eos": True})
    assert over_http.status_code == 200, over_http.text
    assert unset.text == at_one.text == over_http.json()["choices"][0]["text"]
    greedy_run = stub.Generate(pb.GenerateRequest(text=prompt, sampling=greedy(8, ignore_eos=True)), metadata=AUTH, timeout=60)
    assert list(unset.token_ids) != list(greedy_run.token_ids)  # it samples: 8 draws at 1.0 from a random model


def test_images_go_over_grpc_as_bytes_or_as_a_data_url(stub):
    from tests.reliability.hostile_inputs import data_url

    [model] = stub.ListModels(pb.ListModelsRequest(), metadata=AUTH, timeout=30).models
    image = photo_png(seed=11)
    by_bytes = pb.ChatMessage(role="user", parts=[pb.ContentPart(image=pb.Image(data=image, mime_type="image/png")), pb.ContentPart(text="What is it?")])
    by_url = pb.ChatMessage(role="user", parts=[pb.ContentPart(image=pb.Image(url=data_url(image))), pb.ContentPart(text="What is it?")])
    requests = [pb.GenerateRequest(chat=chat(m), sampling=greedy(4, ignore_eos=True)) for m in (by_bytes, by_url)]
    if not model.vision:  # the same refusal as HTTP's for images on a text-only model
        for error in unary_and_stream(stub, requests[0]):
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "no vision tower" in error.details()
            assert detail(error, error_details_pb2.BadRequest).field_violations[0].field == "messages[0].content[0].image_url"
        return
    answers = [stub.Generate(r, metadata=AUTH, timeout=120) for r in requests]
    assert list(answers[0].token_ids) == list(answers[1].token_ids) and len(answers[0].token_ids) == 4
    text_only = stub.Generate(pb.GenerateRequest(chat=chat(user("What is it?")), sampling=greedy(1)), metadata=AUTH, timeout=60)
    assert answers[0].usage.prompt_tokens == answers[1].usage.prompt_tokens > text_only.usage.prompt_tokens
    streamed = list(stub.GenerateStream(requests[0], metadata=AUTH, timeout=120))
    assert [i for m in streamed for i in m.token_ids] == list(answers[0].token_ids)


def test_an_image_that_is_not_one_is_refused_naming_the_part(stub):
    bad = pb.ChatMessage(role="user", parts=[pb.ContentPart(text="Look:"), pb.ContentPart(image=pb.Image(data=b"GIF89a but not really", mime_type="image/gif"))])
    for error in unary_and_stream(stub, pb.GenerateRequest(chat=chat(bad), sampling=greedy(2))):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert detail(error, error_details_pb2.BadRequest).field_violations[0].field == "messages[0].content[1].image_url"


def test_list_models(stub, served):
    response = stub.ListModels(pb.ListModelsRequest(), metadata=AUTH, timeout=30)
    [model] = response.models
    assert model.id == served.model and model.max_model_len > 0


# -- what builds on the engine's and the HTTP API's fields --------------------------------------
def test_n_choices_with_a_seed_are_reproducible_and_match_http(stub, http, served):
    prompt = "Once upon a time"
    request = pb.GenerateRequest(text=prompt, sampling=pb.SamplingParams(max_tokens=6, n=3, seed=7, ignore_eos=True))
    first = stub.Generate(request, metadata=AUTH, timeout=120)
    again = stub.Generate(request, metadata=AUTH, timeout=120)
    assert sorted(c.index for c in first.choices) == [0, 1, 2]
    assert [c.token_ids for c in first.choices] == [c.token_ids for c in again.choices]
    assert len({tuple(c.token_ids) for c in first.choices}) > 1  # each choice draws its own tokens
    assert not first.text and not first.token_ids  # the top-level fields speak for n == 1 only
    assert first.usage.completion_tokens == 18
    over_http = http.post("/completions", json={"model": served.model, "prompt": prompt, "max_tokens": 6, "n": 3, "seed": 7, "ignore_eos": True})
    assert sorted((c["index"], c["text"]) for c in over_http.json()["choices"]) == [(c.index, c.text) for c in first.choices]
    streamed: dict[int, list[int]] = {}
    for message in stub.GenerateStream(request, metadata=AUTH, timeout=120):
        for c in message.choices:
            streamed.setdefault(c.index, []).extend(c.token_ids)
    assert [streamed[c.index] for c in first.choices] == [list(c.token_ids) for c in first.choices]


def test_logprobs_are_consistent_with_greedy_choices(stub, http, served):
    request = pb.GenerateRequest(chat=chat(user("Name a colour")), sampling=greedy(6, ignore_eos=True, logprobs=True, top_logprobs=3))
    [choice] = stub.Generate(request, metadata=AUTH, timeout=60).choices
    assert len(choice.logprobs) == len(choice.token_ids) == 6
    for token_id, entry in zip(choice.token_ids, choice.logprobs):
        assert entry.token_id == token_id and entry.logprob <= 0.0 and len(entry.top_logprobs) == 3
        best = entry.top_logprobs[0]
        assert best.token_id == token_id and best.logprob == pytest.approx(entry.logprob, abs=1e-5)  # greedy took the likeliest
        assert all(a.logprob >= b.logprob for a, b in zip(entry.top_logprobs, entry.top_logprobs[1:]))
        assert entry.bytes.decode("utf-8", errors="replace") == entry.token or entry.token.startswith("bytes:")
    body = {"model": served.model, "messages": [{"role": "user", "content": "Name a colour"}], "max_tokens": 6, "temperature": 0,
            "ignore_eos": True, "logprobs": True, "top_logprobs": 3}  # fmt: skip
    content = http.post("/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in content] == [e.token for e in choice.logprobs]
    assert [e["logprob"] for e in content] == pytest.approx([e.logprob for e in choice.logprobs], abs=1e-5)
    streamed = [e for m in stub.GenerateStream(request, metadata=AUTH, timeout=60) for c in m.choices for e in c.logprobs]
    assert [e.token_id for e in streamed] == list(choice.token_ids)


def test_echo_returns_the_prompt_and_its_logprobs_as_http_does(stub, http, served):
    prompt = "The sea was calm"
    request = pb.GenerateRequest(text=prompt, echo=True, sampling=greedy(3, ignore_eos=True, logprobs=True))
    response = stub.Generate(request, metadata=AUTH, timeout=60)
    [choice] = response.choices
    assert choice.text.startswith(prompt) and len(choice.token_ids) == 3 and len(choice.logprobs) == 3
    assert len(choice.prompt_logprobs) == response.usage.prompt_tokens
    assert not choice.prompt_logprobs[0].HasField("logprob") and all(e.HasField("logprob") for e in choice.prompt_logprobs[1:])
    body = {"model": served.model, "prompt": prompt, "echo": True, "max_tokens": 3, "temperature": 0, "ignore_eos": True, "logprobs": 0}
    over_http = http.post("/completions", json=body).json()["choices"][0]
    assert over_http["text"] == choice.text
    assert over_http["logprobs"]["tokens"] == [e.token for e in [*choice.prompt_logprobs, *choice.logprobs]]


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "kind": {"enum": ["cat", "dog"]},
        "tags": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "maxItems": 3},
        "inner": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False},
    },
    "required": ["name", "kind", "tags", "inner"],
    "additionalProperties": False,
}


def test_a_json_schema_answer_validates(stub):
    fmt = pb.ResponseFormat(type="json_schema", json_schema=pb.JsonSchema(name="pet", schema=json.dumps(SCHEMA), strict=True))
    request = pb.GenerateRequest(chat=chat(user("Describe a pet as JSON")), sampling=greedy(200), response_format=fmt)
    for response in (stub.Generate(request, metadata=AUTH, timeout=120),):
        assert response.finish_reason == "stop", response.text
        jsonschema.validate(json.loads(response.text), SCHEMA)
    streamed = "".join(m.text for m in stub.GenerateStream(request, metadata=AUTH, timeout=120))
    assert streamed == response.text


def test_a_required_tool_call_parses(stub):
    parameters = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"], "additionalProperties": False}
    tool = pb.Tool(function=pb.FunctionDefinition(name="get_weather", description="Today's weather in a city", parameters=json.dumps(parameters)))
    request = pb.GenerateRequest(
        chat=chat(user("What is the weather in Paris?")), sampling=greedy(100), tools=[tool], tool_choice=pb.ToolChoice(mode="required"), parallel_tool_calls=False
    )
    [choice] = stub.Generate(request, metadata=AUTH, timeout=120).choices
    assert choice.finish_reason == "tool_calls"
    [call] = choice.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), parameters)
    # Streamed, the call arrives in pieces: its id and name first, then its arguments.
    pieces = [c for m in stub.GenerateStream(request, metadata=AUTH, timeout=120) for ch in m.choices for c in ch.tool_calls]
    assert pieces and pieces[0].function.name == "get_weather" and pieces[0].id
    assert {p.index for p in pieces} == {0}
    assert json.loads("".join(p.function.arguments for p in pieces)) == json.loads(call.function.arguments)


# -- refusals ------------------------------------------------------------------------------------
def test_health_answers_serving_without_metadata(channel):
    health = health_pb2_grpc.HealthStub(channel)
    # A Kubernetes gRPC probe names no application and carries no key.
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == health_pb2.HealthCheckResponse.SERVING
    named = health.Check(health_pb2.HealthCheckRequest(service="pavana.v1.Pavana"), metadata=[APP], timeout=30)
    assert named.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(max_tokens=0)), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(temperature=9)), grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        (pb.GenerateRequest(token_ids=pb.TokenIds(ids=[5] * 4096)), grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
        (pb.GenerateRequest(token_ids=pb.TokenIds(ids=[])), grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
        (pb.GenerateRequest(sampling=greedy(3)), grpc.StatusCode.INVALID_ARGUMENT, "input"),
        (pb.GenerateRequest(chat=chat(pb.ChatMessage(role="robot", content="x"))), grpc.StatusCode.INVALID_ARGUMENT, "messages[0].role"),
        (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(presence_penalty=3)), grpc.StatusCode.INVALID_ARGUMENT, "presence_penalty"),
        (pb.GenerateRequest(model="gpt-17", text="hi"), grpc.StatusCode.NOT_FOUND, None),
    ],
    ids=["max_tokens 0", "temperature 9", "over the context", "empty prompt", "no input", "unknown role", "penalty 3", "unknown model"],
)
def test_bad_requests_get_their_status_codes_and_name_the_field_unary_and_streaming(stub, request_, code, field):
    for error in unary_and_stream(stub, request_):
        assert error.code() == code and error.details()
        if field is not None:
            [violation] = detail(error, error_details_pb2.BadRequest).field_violations
            assert violation.field == field and violation.description == error.details()
    assert stub.Generate(pb.GenerateRequest(text="Hello", sampling=greedy(2)), metadata=AUTH, timeout=30).usage.completion_tokens >= 1


def test_a_field_this_server_does_not_know_is_refused_naming_it(stub):
    request = pb.GenerateRequest(text="hi", sampling=greedy(2))
    request.sampling.MergeFromString(bytes([0xC8, 0x3E, 0x01]))  # field 1001 of a newer SamplingParams
    for error in unary_and_stream(stub, request):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "no field number 1001" in error.details()
        assert detail(error, error_details_pb2.BadRequest).field_violations[0].field == "sampling.#1001"


@pytest.mark.parametrize("metadata", [[APP], [APP, ("x-api-key", "wrong-key")]], ids=["no key", "wrong key"])
def test_requests_without_a_valid_key_are_unauthenticated(stub, metadata):
    request = pb.GenerateRequest(text="hi", sampling=greedy(2))
    for call in (stub.Generate, lambda r, **kw: list(stub.GenerateStream(r, **kw)), lambda r, **kw: stub.ListModels(pb.ListModelsRequest(), **kw)):
        with pytest.raises(grpc.RpcError) as info:
            call(request, metadata=metadata, timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_overload_is_resource_exhausted_with_retry_info(served, ray_cluster):
    """An application that admits one request at a time: while a stream holds the slot, a second
    request is refused with RESOURCE_EXHAUSTED, a RetryInfo and `retry-after`, unary or streaming."""
    import uuid

    from cluster.spec import ClusterSpec
    from tests.conftest import deployed_app
    from tests.router.conftest import colocated_spec

    raw = colocated_spec(served.spec).model_dump(mode="json")
    raw["pools"].pop("vision", None)
    raw.update(max_in_flight=1, telemetry_prefix=f"test:{uuid.uuid4().hex}")
    name = "grpc-overload"
    with deployed_app(ClusterSpec.model_validate(raw), name, "/grpc-overload", ray_cluster):
        metadata = [("application", name), ("x-api-key", API_KEY)]
        with grpc.insecure_channel(served.grpc_address) as channel:
            stub = pavana_pb2_grpc.PavanaStub(channel)
            holder = stub.GenerateStream(pb.GenerateRequest(text="Hold the line", sampling=greedy(200, ignore_eos=True)), metadata=metadata, timeout=120)
            assert next(holder).id  # admitted and streaming: the one slot is taken
            try:
                for error in unary_and_stream(stub, pb.GenerateRequest(text="Me too", sampling=greedy(2)), metadata):
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    retry = detail(error, error_details_pb2.RetryInfo)
                    assert retry is not None and retry.retry_delay.seconds >= 1
                    assert dict(error.trailing_metadata())["retry-after"] == str(retry.retry_delay.seconds)
            finally:
                holder.cancel()


def test_reflection_lists_the_services_without_the_proto(channel):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"pavana.v1.Pavana", "grpc.health.v1.Health"} <= services
    pool = DescriptorPool(database)
    generate = pool.FindServiceByName("pavana.v1.Pavana").methods_by_name["GenerateStream"]
    assert generate.output_type.full_name == "pavana.v1.GenerateResponse" and generate.server_streaming
    assert "response_format" in pool.FindMessageTypeByName("pavana.v1.GenerateRequest").fields_by_name
