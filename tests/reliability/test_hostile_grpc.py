"""Hostile gRPC calls to a real application through Ray Serve's gRPC proxy: bytes that are
no `GenerateRequest`, fields of the wrong wire type, oversized messages, and generated
requests. Each gets a status code and a message within the timeout, never `INTERNAL` or a
dropped connection, and the server keeps serving.

Bytes that do not parse reach the ingress as `Malformed` (Pavana registers its service with a
lenient deserializer, `router/proto/lenient.py`) and get `INVALID_ARGUMENT` with the parser's
reason; everything that parses is checked like HTTP input: `INVALID_ARGUMENT`, `NOT_FOUND` or,
over Pavana's message limit, `RESOURCE_EXHAUSTED`.
"""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf.internal.encoder import _VarintBytes
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.limits import DEFAULT_LIMITS
from router.proto import pavana_pb2 as pb
from router.proto import pavana_pb2_grpc
from tests.reliability.conftest import APP_NAME, HostileApp

pytestmark = [pytest.mark.ray, pytest.mark.redis]

GENERATE = "/pavana.v1.Pavana/Generate"
GENERATE_STREAM = "/pavana.v1.Pavana/GenerateStream"
CALL_TIMEOUT_S = 30.0
# What a hostile call may get back; INTERNAL, UNAVAILABLE or DEADLINE_EXCEEDED would mean a
# crash, a lost replica or a hung call.
CLEAN_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def channel(hostile_app: HostileApp):
    limit = 64 * 1024 * 1024
    options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(hostile_app.grpc_address, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel


@pytest.fixture(scope="module")
def raw(channel):
    """Generate and GenerateStream with identity serializers: bytes in, bytes out."""
    unary = channel.unary_unary(GENERATE, request_serializer=None, response_deserializer=None)
    stream = channel.unary_stream(GENERATE_STREAM, request_serializer=None, response_deserializer=None)
    return unary, stream


@pytest.fixture(scope="module")
def stub(channel):
    return pavana_pb2_grpc.PavanaStub(channel)


def call_raw(raw, payload: bytes, metadata) -> tuple[grpc.StatusCode, str, float]:
    """Both methods with the same bytes; they must agree. Returns (code, details, seconds)."""
    unary, stream = raw
    results = []
    for method in (unary, lambda p, **kw: list(stream(p, **kw))):
        started = time.monotonic()
        try:
            method(payload, metadata=metadata, timeout=CALL_TIMEOUT_S)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        results.append((code, details, time.monotonic() - started))
    (code, details, unary_s), (stream_code, _, stream_s) = results
    assert code == stream_code, f"unary {code} but stream {stream_code} for {payload[:60]!r}"
    assert code in CLEAN_CODES, f"{code} {details!r} for {payload[:60]!r}"
    assert code == grpc.StatusCode.OK or details, f"{code} without a message for {payload[:60]!r}"
    return code, details, max(unary_s, stream_s)


def assert_serving(stub, hostile_app: HostileApp) -> None:
    request = pb.GenerateRequest(text="Hello", sampling=pb.SamplingParams(max_tokens=2, temperature=0))
    assert stub.Generate(request, metadata=hostile_app.grpc_metadata, timeout=CALL_TIMEOUT_S).usage.completion_tokens >= 1


def field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _VarintBytes(number << 3 | wire_type) + payload


def length_delimited(number: int, data: bytes) -> bytes:
    return field(number, 2, _VarintBytes(len(data)) + data)


@pytest.mark.parametrize(
    ("payload", "code", "says"),
    [
        (b"\xff\xff\xff\xff\x0f", grpc.StatusCode.INVALID_ARGUMENT, "not a valid pavana.v1.GenerateRequest message"),
        (length_delimited(2, b"ok")[:-1], grpc.StatusCode.INVALID_ARGUMENT, "not a valid pavana.v1.GenerateRequest"),  # cut short
        (length_delimited(2, b"\xff\xfe not utf-8"), grpc.StatusCode.INVALID_ARGUMENT, "not a valid pavana.v1.GenerateRequest"),
        # `text` sent as a varint: an unknown field to the parser, so the request has no input.
        (field(2, 0, _VarintBytes(7)), grpc.StatusCode.INVALID_ARGUMENT, "input: set one of"),
        # `sampling` sent as a fixed64: skipped the same way; the text stays.
        (length_delimited(2, b"hi") + field(5, 1, b"\x00" * 8), grpc.StatusCode.OK, ""),
        (length_delimited(2, b"hi") + length_delimited(5, field(1, 0, _VarintBytes(2**64 - 5))), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        # packed token ids of -1 (ten-byte varints), and of 2**40 + 5, which int32 cuts to 5.
        (length_delimited(3, length_delimited(1, _VarintBytes(2**64 - 1) * 3)), grpc.StatusCode.INVALID_ARGUMENT, "got -1"),
        (length_delimited(3, length_delimited(1, _VarintBytes(2**40 + 5) * 3)), grpc.StatusCode.OK, ""),
        (b"", grpc.StatusCode.INVALID_ARGUMENT, "input: set one of"),
    ],
    ids=["garbage", "truncated", "bad utf-8", "text as varint", "sampling as fixed64", "negative max_tokens", "token id -1", "token id over int32", "empty"],
)
def test_malformed_messages_get_a_clean_status(raw, stub, hostile_app, payload, code, says):
    got, details, seconds = call_raw(raw, payload, hostile_app.grpc_metadata)
    assert got == code and says in details, (got, details)
    assert seconds < 10.0
    assert_serving(stub, hostile_app)


def test_oversized_messages_are_refused_before_their_prompt_is_read(raw, stub, hostile_app):
    size = DEFAULT_LIMITS.max_grpc_message_bytes + 1024
    text = pb.GenerateRequest(text="wind " * (size // 5)).SerializeToString()
    code, details, seconds = call_raw(raw, text, hostile_app.grpc_metadata)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most" in details, (code, details)
    # Tokenizing that text on the ingress took about 14 s here before the limit.
    assert seconds < 10.0, f"{seconds:.1f} s"
    ids = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[300] * (size // 2))).SerializeToString()
    assert call_raw(raw, ids, hostile_app.grpc_metadata)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_serving(stub, hostile_app)


def test_a_long_prompt_under_the_limit_is_refused_without_tokenizing(raw, hostile_app):
    text = pb.GenerateRequest(text="wind " * 1_000_000).SerializeToString()  # 5 MB
    code, details, seconds = call_raw(raw, text, hostile_app.grpc_metadata)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "characters" in details, (code, details)
    assert seconds < 10.0


@settings(max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(payload=st.binary(max_size=256))
def test_random_bytes(raw, hostile_app, payload):
    call_raw(raw, payload, hostile_app.grpc_metadata)


int32 = st.integers(-(2**31), 2**31 - 1)
sampling = st.builds(
    pb.SamplingParams,
    max_tokens=st.one_of(st.none(), st.integers(-3, 8), int32),
    temperature=st.one_of(st.none(), st.floats(width=32, allow_nan=True)),
    top_p=st.one_of(st.none(), st.floats(width=32)),
    top_k=st.one_of(st.none(), int32),
    seed=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    stop=st.lists(st.text(max_size=5), max_size=6),
    ignore_eos=st.booleans(),
)
requests = st.builds(
    pb.GenerateRequest,
    model=st.sampled_from(["", "pavana-tiny", "gpt-4", "\u0000"]),
    text=st.one_of(st.none(), st.text(max_size=300)),
    sampling=sampling,
) | st.builds(
    pb.GenerateRequest,
    token_ids=st.builds(pb.TokenIds, ids=st.lists(int32 | st.integers(0, 511), max_size=200)),
    sampling=sampling,
) | st.builds(
    pb.GenerateRequest,
    chat=st.builds(pb.Chat, messages=st.lists(st.builds(pb.ChatMessage, role=st.sampled_from(["user", "system", "assistant", "robot", ""]), content=st.text(max_size=100)), max_size=4)),
    sampling=sampling,
)


@settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(request=requests)
def test_generated_requests(raw, hostile_app, request):
    code, details, _ = call_raw(raw, request.SerializeToString(), hostile_app.grpc_metadata)
    assert code != grpc.StatusCode.UNKNOWN, f"a well-formed message was not understood: {details}"


def test_the_server_still_serves_and_is_healthy(channel, stub, hostile_app):
    assert_serving(stub, hostile_app)
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="pavana.v1.Pavana"), metadata=[("application", APP_NAME)], timeout=30)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
