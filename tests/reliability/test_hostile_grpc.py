"""Hostile gRPC calls to a real application through Ray Serve's gRPC proxy: bytes that are
no `GenerateRequest`, fields of the wrong wire type, oversized messages, generated requests and
metadata, and cancelled streams — over a thousand messages, each sent unary and streaming. Each gets a status code and a message within the timeout, never `INTERNAL` or a
dropped connection, and the server keeps serving.

Bytes that do not parse reach the ingress as `Malformed` (Pavana registers its service with a
lenient deserializer, `router/proto/lenient.py`) and get `INVALID_ARGUMENT` with the parser's
reason; so do fields the server's proto lacks and fields sent with the wrong wire type, which
the parser would otherwise set aside silently. Everything else is checked like HTTP input:
`INVALID_ARGUMENT`, `NOT_FOUND` or, over Pavana's message limit, `RESOURCE_EXHAUSTED`. Every
`INVALID_ARGUMENT`, unary or streaming, carries a `google.rpc.BadRequest` naming a field.
"""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf.internal.encoder import _VarintBytes
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.limits import DEFAULT_LIMITS
from tests.reliability.hostile_inputs import photo_png
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


def bad_request_field(error: grpc.RpcError) -> str | None:
    status = rpc_status.from_call(error)
    for packed in status.details if status is not None else ():
        if packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            packed.Unpack(bad_request)
            return bad_request.field_violations[0].field
    return None


def call_raw(raw, payload: bytes, metadata) -> tuple[grpc.StatusCode, str, float]:
    """Both methods with the same bytes; they must agree, and name the same field when the
    argument is invalid. Returns (code, details, seconds)."""
    unary, stream = raw
    results = []
    for method in (unary, lambda p, **kw: list(stream(p, **kw))):
        started = time.monotonic()
        field = None
        try:
            method(payload, metadata=metadata, timeout=CALL_TIMEOUT_S)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                field = bad_request_field(exc)
                assert field, f"INVALID_ARGUMENT without a BadRequest naming a field: {details!r}"
        results.append((code, details, time.monotonic() - started, field))
    (code, details, unary_s, unary_field), (stream_code, _, stream_s, stream_field) = results
    assert code == stream_code, f"unary {code} but stream {stream_code} for {payload[:60]!r}"
    assert unary_field == stream_field, (unary_field, stream_field)
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
        # `text` sent as a varint: the parser sets it aside as an unknown field; Pavana refuses it.
        (field(2, 0, _VarintBytes(7)), grpc.StatusCode.INVALID_ARGUMENT, "text: sent as a varint, but the field is a string"),
        (length_delimited(2, b"hi") + field(5, 1, b"\x00" * 8), grpc.StatusCode.INVALID_ARGUMENT, "sampling: sent as a 64-bit value"),
        # A field number from a newer proto, deep in a chat message.
        (length_delimited(4, length_delimited(1, length_delimited(1, b"user") + field(77, 0, _VarintBytes(1)))), grpc.StatusCode.INVALID_ARGUMENT, "chat.messages[0].#77"),
        (length_delimited(2, b"hi") + length_delimited(5, field(1, 0, _VarintBytes(2**64 - 5))), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        # packed token ids of -1 (ten-byte varints), and of 2**40 + 5, which int32 cuts to 5.
        (length_delimited(3, length_delimited(1, _VarintBytes(2**64 - 1) * 3)), grpc.StatusCode.INVALID_ARGUMENT, "got -1"),
        (length_delimited(3, length_delimited(1, _VarintBytes(2**40 + 5) * 3)), grpc.StatusCode.OK, ""),
        (b"", grpc.StatusCode.INVALID_ARGUMENT, "input: set one of"),
    ],
    ids=["garbage", "truncated", "bad utf-8", "text as varint", "sampling as fixed64", "unknown nested field", "negative max_tokens", "token id -1", "token id over int32", "empty"],
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


@settings(max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(payload=st.binary(max_size=256))
def test_random_bytes(raw, hostile_app, payload):
    call_raw(raw, payload, hostile_app.grpc_metadata)


int32 = st.integers(-(2**31), 2**31 - 1)
finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
sampling = st.builds(
    pb.SamplingParams,
    max_tokens=st.one_of(st.none(), st.integers(-3, 8), int32),
    temperature=st.one_of(st.none(), st.floats(width=32, allow_nan=True)),
    top_p=st.one_of(st.none(), st.floats(width=32)),
    top_k=st.one_of(st.none(), int32),
    seed=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    stop=st.lists(st.text(max_size=5), max_size=6),
    ignore_eos=st.booleans(),
    n=st.one_of(st.none(), st.integers(-1, 3), int32),
    presence_penalty=st.one_of(st.none(), st.floats(width=32, allow_nan=True)),
    frequency_penalty=st.one_of(st.none(), finite32),
    repetition_penalty=st.one_of(st.none(), st.floats(width=32, allow_nan=True)),
    min_p=st.one_of(st.none(), finite32),
    min_tokens=st.one_of(st.none(), st.integers(-2, 4), int32),
    stop_token_ids=st.lists(int32 | st.integers(0, 511), max_size=3),
    logit_bias=st.dictionaries(int32 | st.integers(0, 511), st.floats(width=32, allow_nan=True), max_size=3),
    logprobs=st.booleans(),
    top_logprobs=st.one_of(st.none(), st.integers(-1, 25)),
)
json_text = st.one_of(st.text(max_size=40), st.sampled_from(['{"type": "object"}', '{"type": "string"}', "[]", "{}", '{"$ref": "#/nowhere"}']))
images = st.one_of(
    st.builds(pb.Image, data=st.binary(max_size=64), mime_type=st.sampled_from(["", "image/png", "text/plain"])),
    st.builds(pb.Image, url=st.one_of(st.text(max_size=40), st.just("data:image/png;base64,AAAA"), st.just("https://example.com/a.png"))),
    st.builds(pb.Image, data=st.just(photo_png(16, seed=1)), mime_type=st.just("image/png")),
)
parts = st.one_of(st.builds(pb.ContentPart, text=st.text(max_size=30)), st.builds(pb.ContentPart, image=images), st.just(pb.ContentPart()))
calls = st.builds(pb.ToolCall, id=st.text(max_size=8), type=st.sampled_from(["", "function", "other"]),
                  function=st.builds(pb.FunctionCall, name=st.text(max_size=8), arguments=json_text))  # fmt: skip
messages = st.one_of(
    st.builds(pb.ChatMessage, role=st.sampled_from(["user", "system", "assistant", "robot", ""]), content=st.text(max_size=100)),
    st.builds(pb.ChatMessage, role=st.sampled_from(["user", "assistant", "tool"]), parts=st.lists(parts, max_size=3),
              name=st.text(max_size=5), tool_calls=st.lists(calls, max_size=2), tool_call_id=st.text(max_size=8)),
)  # fmt: skip
tools = st.lists(st.builds(pb.Tool, type=st.sampled_from(["", "function", "code"]),
                           function=st.builds(pb.FunctionDefinition, name=st.text(max_size=10), parameters=json_text)), max_size=2)  # fmt: skip
tool_choices = st.one_of(st.builds(pb.ToolChoice, mode=st.sampled_from(["auto", "none", "required", "always"])), st.builds(pb.ToolChoice, function_name=st.text(max_size=8)))
formats = st.builds(pb.ResponseFormat, type=st.sampled_from(["", "text", "json_object", "json_schema", "yaml"]),
                    json_schema=st.builds(pb.JsonSchema, name=st.text(max_size=8), schema=json_text))  # fmt: skip
extras = {"echo": st.booleans(), "priority": st.one_of(st.none(), int32), "user": st.text(max_size=10)}
requests = st.builds(
    pb.GenerateRequest,
    model=st.sampled_from(["", "pavana-tiny", "gpt-4", "\u0000"]),
    text=st.one_of(st.none(), st.text(max_size=300)),
    sampling=sampling,
    **extras,
) | st.builds(
    pb.GenerateRequest,
    token_ids=st.builds(pb.TokenIds, ids=st.lists(int32 | st.integers(0, 511), max_size=200)),
    sampling=sampling,
    **extras,
) | st.builds(
    pb.GenerateRequest,
    chat=st.builds(pb.Chat, messages=st.lists(messages, max_size=4)),
    sampling=sampling,
    response_format=st.one_of(st.none(), formats),
    tools=tools,
    tool_choice=st.one_of(st.none(), tool_choices),
    parallel_tool_calls=st.one_of(st.none(), st.booleans()),
    **extras,
)


@settings(max_examples=400, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(request=requests)
def test_generated_requests(raw, hostile_app, request):
    code, details, _ = call_raw(raw, request.SerializeToString(), hostile_app.grpc_metadata)
    assert code != grpc.StatusCode.UNKNOWN, f"a well-formed message was not understood: {details}"


# -- metadata and cancelled calls ---------------------------------------------------------------
# Metadata is refused with the status its HTTP twin gets (a key: 401 → UNAUTHENTICATED; a class
# the key may not use: 403 → PERMISSION_DENIED), never a crash.
METADATA_CODES = CLEAN_CODES | {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
header_names = st.sampled_from(["x-api-key", "authorization", "x-pavana-qos-class", "application", "user-agent", "x-request-id"]) | st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12
).filter(lambda k: not k.startswith("grpc-") and not k.endswith("-bin"))
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
metadata_lists = st.lists(st.tuples(header_names, header_values), max_size=5)
SMALL_REQUEST = pb.GenerateRequest(text="Hello", sampling=pb.SamplingParams(max_tokens=2, temperature=0))


@settings(max_examples=250, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(extra=metadata_lists, keep_key=st.booleans(), keep_app=st.booleans())
def test_generated_metadata(raw, hostile_app, extra, keep_key, keep_app):
    """Random headers beside (or instead of) the key and the application's name."""
    base = [(k, v) for k, v in hostile_app.grpc_metadata if (k == "x-api-key" and keep_key) or (k == "application" and keep_app)]
    unary, stream = raw
    payload = SMALL_REQUEST.SerializeToString()
    codes = []
    for method in (unary, lambda p, **kw: list(stream(p, **kw))):
        try:
            method(payload, metadata=[*base, *extra], timeout=CALL_TIMEOUT_S)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            assert exc.code() in METADATA_CODES and exc.details(), (exc.code(), exc.details(), extra)
            codes.append(exc.code())
    assert codes[0] == codes[1], (codes, extra)


def engine_idle(hostile_app: HostileApp) -> bool:
    from ray import serve

    from controller.app import deployment_name

    handle = serve.get_deployment_handle(deployment_name("colocated", hostile_app.spec.sites[0].name), app_name=APP_NAME)
    stats = handle.stats.remote().result(timeout_s=30)
    return stats["running"] == 0 and stats["waiting"] == 0


def test_cancelled_streams_end_and_leave_nothing_running(channel, stub, hostile_app):
    """Streams cancelled at their first token, at once, and at random points: each ends on the
    client's side; afterwards the engine holds no request (the cancellations reached it) and
    the server serves."""
    import random

    rng = random.Random(0)
    request = pb.GenerateRequest(text="The wind farm", sampling=pb.SamplingParams(max_tokens=60, temperature=0, ignore_eos=True))
    for i in range(150):
        call = stub.GenerateStream(request, metadata=hostile_app.grpc_metadata, timeout=CALL_TIMEOUT_S)
        read = rng.choice([0, 1, 1, 3, 10])
        try:
            for _, _ in zip(range(read), call):
                pass
        finally:
            call.cancel()
        assert call.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.OK), (i, call.code())
    deadline = time.monotonic() + 60
    while not engine_idle(hostile_app):
        assert time.monotonic() < deadline, "cancelled streams are still running in the engine"
        time.sleep(0.5)
    assert_serving(stub, hostile_app)


def test_the_server_still_serves_and_is_healthy(channel, stub, hostile_app):
    assert_serving(stub, hostile_app)
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="pavana.v1.Pavana"), metadata=[("application", APP_NAME)], timeout=30)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
