"""Pavana's gRPC API through Ray Serve's gRPC proxy, with the generated client."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router.proto import pavana_pb2 as pb
from router.proto import pavana_pb2_grpc
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


def greedy(max_tokens: int, **extra) -> pb.SamplingParams:
    return pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, **extra)


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


def test_streaming_generate_adds_up_to_the_unary_answer(stub):
    request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 40, 41, 42, 43]), sampling=greedy(12, ignore_eos=True))
    whole = stub.Generate(request, metadata=AUTH, timeout=60)
    messages = list(stub.GenerateStream(request, metadata=AUTH, timeout=60))
    assert [i for m in messages for i in m.token_ids] == list(whole.token_ids) and len(whole.token_ids) == 12
    assert "".join(m.text for m in messages) == whole.text
    assert [m.finish_reason for m in messages if m.finish_reason] == ["length"]
    last = messages[-1]
    assert last.usage.prompt_tokens == 5 and last.usage.completion_tokens == 12


def test_chat_input(stub):
    chat = pb.Chat(messages=[pb.ChatMessage(role="user", content="Hello")])
    response = stub.Generate(pb.GenerateRequest(chat=chat, sampling=greedy(5)), metadata=AUTH, timeout=60)
    assert response.id.startswith("chatcmpl-") and 1 <= response.usage.completion_tokens <= 5


def test_list_models(stub, served):
    response = stub.ListModels(pb.ListModelsRequest(), metadata=AUTH, timeout=30)
    [model] = response.models
    assert model.id == served.model and model.max_model_len > 0


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
    ("request_", "code"),
    [
        (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(max_tokens=0)), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(temperature=9)), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GenerateRequest(token_ids=pb.TokenIds(ids=[5] * 4096)), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GenerateRequest(token_ids=pb.TokenIds(ids=[])), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GenerateRequest(sampling=greedy(3)), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GenerateRequest(chat=pb.Chat(messages=[pb.ChatMessage(role="robot", content="x")])), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GenerateRequest(model="gpt-17", text="hi"), grpc.StatusCode.NOT_FOUND),
    ],
    ids=["max_tokens 0", "temperature 9", "over the context", "empty prompt", "no input", "unknown role", "unknown model"],
)
def test_bad_requests_get_their_status_codes_unary_and_streaming(stub, request_, code):
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(request_, metadata=AUTH, timeout=30)
    assert info.value.code() == code and info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        list(stub.GenerateStream(request_, metadata=AUTH, timeout=30))
    assert info.value.code() == code and info.value.details()
    assert stub.Generate(pb.GenerateRequest(text="Hello", sampling=greedy(2)), metadata=AUTH, timeout=30).usage.completion_tokens >= 1


@pytest.mark.parametrize("metadata", [[APP], [APP, ("x-api-key", "wrong-key")]], ids=["no key", "wrong key"])
def test_requests_without_a_valid_key_are_unauthenticated(stub, metadata):
    request = pb.GenerateRequest(text="hi", sampling=greedy(2))
    for call in (stub.Generate, lambda r, **kw: list(stub.GenerateStream(r, **kw)), lambda r, **kw: stub.ListModels(pb.ListModelsRequest(), **kw)):
        with pytest.raises(grpc.RpcError) as info:
            call(request, metadata=metadata, timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
