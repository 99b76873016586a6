"""Request size limits (`router/limits.py`): the pure checks, the ASGI middleware in front of a
real FastAPI application (through httpx's ASGI transport, no Ray), and the prompt bounds with
the bundled model's real tokenizer."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import pytest
from fastapi import FastAPI, Request
from hypothesis import given, settings
from hypothesis import strategies as st

from router.errors import MAX_MESSAGE_CHARS, APIError, error_body, grpc_code_name
from router.limits import (
    MiB,
    PROMPT_CHARS_SLACK,
    RequestLimits,
    RequestLimitsMiddleware,
    check_grpc_message,
    check_image_urls,
    check_prompt_chars,
    declared_length,
    header_refusal,
    prompt_char_limit,
)
from router.prompt import ModelFacts, PromptBuilder
from router.protocol import ChatCompletionRequest, CompletionRequest
from workers.engine.default_model import DEFAULT_MODEL_NAME, ensure_default_model
from workers.engine.tokenizer import Tokenizer

SMALL = RequestLimits(max_body_bytes=1000, max_headers=10, max_header_bytes=400, max_images=2, max_image_url_chars=200)


def assert_openai_error(body: dict, code: str) -> None:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and body["error"]["message"]


# -- the limits themselves ---------------------------------------------------------------------------
def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_images"):
        RequestLimits(max_images=0)
    assert RequestLimits().max_body_bytes == 8 * MiB


def test_header_count_and_size():
    assert header_refusal([(b"a", b"b")] * 10, SMALL) is None
    too_many = header_refusal([(b"a", b"b")] * 11, SMALL)
    assert too_many.status == 431 and "11 headers" in too_many.message
    too_big = header_refusal([(b"x-big", b"v" * 396)], SMALL)
    assert too_big.status == 431 and "401 bytes" in too_big.message
    assert header_refusal([(b"x-big", b"v" * 395)], SMALL) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], (False, None)),
        ([(b"content-length", b"0")], (False, 0)),
        ([(b"Content-Length", b" 12 ")], (True, 12)),
        ([(b"transfer-encoding", b"chunked")], (True, None)),
    ],
)
def test_declared_length(headers, expected):
    assert declared_length(headers) == expected


def test_a_content_length_that_is_not_a_number_is_refused():
    with pytest.raises(APIError) as info:
        declared_length([(b"content-length", b"-5")])
    assert info.value.status == 400 and "Content-Length" in info.value.message


def test_grpc_message_size():
    check_grpc_message(100, SMALL)
    with pytest.raises(APIError) as info:
        check_grpc_message(SMALL.max_grpc_message_bytes + 1, SMALL)
    assert info.value.status == 413 and grpc_code_name(info.value.status) == "RESOURCE_EXHAUSTED"


def test_image_count_and_url_size():
    check_image_urls([("data:x", "a"), ("data:y", "b")], SMALL)
    with pytest.raises(APIError) as info:
        check_image_urls([("data:x", f"p{i}") for i in range(3)], SMALL)
    assert info.value.code == "too_many_images" and "3 images" in info.value.message
    with pytest.raises(APIError) as info:
        check_image_urls([("data:x", "a"), ("d" * 201, "messages[0].content[1].image_url")], SMALL)
    assert info.value.code == "image_too_large" and info.value.param == "messages[0].content[1].image_url"


def test_error_messages_are_clipped():
    body = error_body("x" * (MAX_MESSAGE_CHARS + 500), "invalid_request_error")
    assert len(body["error"]["message"]) < MAX_MESSAGE_CHARS + 40 and "500 more characters" in body["error"]["message"]


# -- the prompt bound, with the real tokenizer ---------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_dir(ensure_default_model())


@pytest.fixture(scope="module")
def longest(tokenizer) -> int:
    return max(len(t) for t in tokenizer.backend.get_vocab(with_added_tokens=True))


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(text=st.text(max_size=400))
def test_a_token_never_covers_more_characters_than_the_longest_vocabulary_entry(tokenizer, longest, text):
    """The property the character bound rests on: tokens >= characters / longest token."""
    assert len(tokenizer.encode(text, add_special_tokens=False)) * longest >= len(text)


def test_prompt_char_limit():
    assert prompt_char_limit(100, ["a", "abcd", "ab"]) == 100 * 4 * PROMPT_CHARS_SLACK
    assert prompt_char_limit(100, []) == 100 * PROMPT_CHARS_SLACK
    check_prompt_chars(10, 10, param="prompt", max_model_len=5)
    with pytest.raises(APIError) as info:
        check_prompt_chars(11, 10, param="prompt", max_model_len=5)
    assert info.value.code == "context_length_exceeded" and info.value.param == "prompt"


def builder(tokenizer, limits: RequestLimits = RequestLimits()) -> PromptBuilder:
    facts = ModelFacts(name=DEFAULT_MODEL_NAME, max_model_len=64, vocab_size=512, block_size=4, image_token_id=3, tokens_per_image=4)
    return PromptBuilder(tokenizer, facts, limits=limits)


def test_a_prompt_of_megabytes_is_refused_without_tokenizing(tokenizer):
    prompts = builder(tokenizer)
    huge = "wind over the hills " * (400_000)  # 8 MB: tokenizing it takes seconds here
    started = time.perf_counter()
    with pytest.raises(APIError) as info:
        prompts.completion(CompletionRequest(model=DEFAULT_MODEL_NAME, prompt=huge), "cmpl-1")
    assert time.perf_counter() - started < 0.5
    assert info.value.code == "context_length_exceeded" and "characters" in info.value.message
    with pytest.raises(APIError) as info:
        prompts.chat(ChatCompletionRequest(model=DEFAULT_MODEL_NAME, messages=[{"role": "user", "content": huge}]), "chat-1")
    assert info.value.param == "messages" and "characters" in info.value.message
    # Many empty messages: short as text, long once rendered with their role markers.
    many = ChatCompletionRequest(model=DEFAULT_MODEL_NAME, messages=[{"role": "user", "content": ""}] * 200_000)
    started = time.perf_counter()
    with pytest.raises(APIError) as info:
        prompts.chat(many, "chat-2")
    assert time.perf_counter() - started < 3
    assert info.value.code == "context_length_exceeded" and "characters" in info.value.message
    # Just under the bound, the tokenizer decides, and says how many tokens.
    with pytest.raises(APIError) as info:
        prompts.completion(CompletionRequest(model=DEFAULT_MODEL_NAME, prompt="a" * prompts.max_prompt_chars), "cmpl-2")
    assert info.value.code == "context_length_exceeded" and "tokens, which leaves none" in info.value.message


def test_images_over_the_limits_are_refused_before_decoding(tokenizer):
    prompts = builder(tokenizer, RequestLimits(max_images=2, max_image_url_chars=100))
    not_even_base64 = "data:image/png;base64,!!!"
    parts = [{"type": "image_url", "image_url": {"url": not_even_base64}}] * 3
    body = ChatCompletionRequest(model=DEFAULT_MODEL_NAME, messages=[{"role": "user", "content": parts}])
    with pytest.raises(APIError) as info:
        prompts.chat(body, "chat-1")
    assert info.value.code == "too_many_images"
    big = "data:image/png;base64," + base64.b64encode(b"\0" * 200).decode()
    body = ChatCompletionRequest(model=DEFAULT_MODEL_NAME, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": big}]}])
    with pytest.raises(APIError) as info:
        prompts.chat(body, "chat-2")
    assert info.value.code == "image_too_large" and info.value.param == "messages[0].content[0].image_url"


# -- the middleware as plain ASGI ----------------------------------------------------------------------
class Recorder:
    """An ASGI application that records what it was called with and echoes the body's size."""

    def __init__(self) -> None:
        self.calls = 0
        self.receive = None

    async def __call__(self, scope, receive, send):
        self.calls += 1
        self.receive = receive
        body = b""
        if scope["type"] == "http" and scope["method"] == "POST":
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


def run_asgi(app, headers, messages):
    """Drive an ASGI app with a request; returns (sent messages, how many receives were made)."""
    sent: list[dict] = []
    pending = list(messages)
    received = 0

    async def receive():
        nonlocal received
        received += 1
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)  # no more messages: a real server would wait for a disconnect

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": headers}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 5))
    return sent, received


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    inner = Recorder()
    sent, received = run_asgi(RequestLimitsMiddleware(inner, SMALL), [(b"content-length", b"1001")], [])
    assert received == 0 and inner.calls == 0
    assert sent[0]["status"] == 413 and (b"connection", b"close") in sent[0]["headers"]
    assert_openai_error(json.loads(sent[1]["body"]), "request_too_large")


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit():
    inner = Recorder()
    chunks = [{"type": "http.request", "body": b"x" * 400, "more_body": True} for _ in range(10)]
    sent, received = run_asgi(RequestLimitsMiddleware(inner, SMALL), [(b"transfer-encoding", b"chunked")], chunks)
    assert sent[0]["status"] == 413 and inner.calls == 0 and received == 3


def test_a_body_within_the_limit_reaches_the_app_whole_and_later_receives_go_to_the_server():
    inner = Recorder()
    chunks = [{"type": "http.request", "body": b"x" * 300, "more_body": True}, {"type": "http.request", "body": b"y" * 200}]
    chunks.append({"type": "http.disconnect"})
    sent, _ = run_asgi(RequestLimitsMiddleware(inner, SMALL), [(b"transfer-encoding", b"chunked")], chunks)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"500"
    assert asyncio.run(inner.receive()) == {"type": "http.disconnect"}


def test_a_request_without_a_body_passes_through_untouched():
    inner = Recorder()
    middleware = RequestLimitsMiddleware(inner, SMALL)
    sent, received = run_asgi(middleware, [(b"host", b"x")], [{"type": "http.request", "body": b""}])
    assert sent[0]["status"] == 200 and inner.calls == 1 and received == 1  # the app's own receive


def test_a_body_that_stalls_is_refused_when_its_time_is_up():
    inner = Recorder()
    limits = RequestLimits(body_timeout_s=0.2)
    trickle = [{"type": "http.request", "body": b"x" * 10, "more_body": True}]  # then nothing more
    started = time.monotonic()
    sent, _ = run_asgi(RequestLimitsMiddleware(inner, limits), [(b"content-length", b"100")], trickle)
    assert 0.2 <= time.monotonic() - started < 2 and inner.calls == 0
    assert sent[0]["status"] == 408
    assert_openai_error(json.loads(sent[1]["body"]), "request_timeout")
    assert "10 bytes came" in json.loads(sent[1]["body"])["error"]["message"]


def test_a_client_that_leaves_before_its_body_gets_no_answer():
    inner = Recorder()
    sent, _ = run_asgi(RequestLimitsMiddleware(inner, SMALL), [(b"content-length", b"10")], [{"type": "http.disconnect"}])
    assert sent == [] and inner.calls == 0


def test_too_many_headers_are_refused_before_the_body():
    inner = Recorder()
    headers = [(f"x-h{i}".encode(), b"v") for i in range(11)]
    sent, received = run_asgi(RequestLimitsMiddleware(inner, SMALL), headers, [])
    assert sent[0]["status"] == 431 and received == 0 and inner.calls == 0


def test_other_scopes_pass_through():
    inner_scopes = []

    async def inner(scope, receive, send):
        inner_scopes.append(scope["type"])

    middleware = RequestLimitsMiddleware(inner, SMALL)
    asyncio.run(middleware({"type": "lifespan"}, None, None))
    assert inner_scopes == ["lifespan"]


# -- the middleware in front of a real FastAPI application ------------------------------------------
@pytest.fixture()
def limited_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestLimitsMiddleware, limits=SMALL)

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"size": len(await request.body())}

    @app.get("/ping")
    async def ping() -> dict:
        return {"ok": True}

    return app


async def test_fastapi_behind_the_limits(limited_app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=limited_app), base_url="http://t") as client:
        assert (await client.post("/echo", content=b"a" * 1000)).json() == {"size": 1000}
        refused = await client.post("/echo", content=b"a" * 1001)
        assert refused.status_code == 413
        assert_openai_error(refused.json(), "request_too_large")

        async def chunks():
            for _ in range(5):
                yield b"b" * 300

        assert (await client.post("/echo", content=chunks())).status_code == 413
        assert (await client.get("/ping")).json() == {"ok": True}
        crowded = await client.get("/ping", headers={f"x-{i}": "v" for i in range(12)})
        assert crowded.status_code == 431
        assert_openai_error(crowded.json(), "headers_too_large")


async def test_the_application_can_set_its_own_limits(limited_app):
    """Limits read from configuration after the middleware is installed: `app.state`."""
    limited_app.state.request_limits = RequestLimits(max_body_bytes=10)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=limited_app), base_url="http://t") as client:
        assert (await client.post("/echo", content=b"a" * 10)).json() == {"size": 10}
        refused = await client.post("/echo", content=b"a" * 11)
        assert refused.status_code == 413 and "at most 10 bytes" in refused.json()["error"]["message"]


# -- sampling bounds -----------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-40, 1e-3])
def test_tiny_temperatures_are_raised_to_a_floor_the_sampler_survives(temperature):
    """Below the floor, logits / temperature overflows float32 and the sampler would fail
    (`torch.multinomial` on NaN), taking the replica's whole batch with it: the engine refuses
    such parameters, and the router raises them to the floor."""
    import torch

    from router.sampling import sampling_params
    from workers.engine.sampler import sample
    from workers.engine.sampling import MIN_SAMPLING_TEMPERATURE, SamplingParams

    logits = torch.randn(2, 512, generator=torch.Generator().manual_seed(0)) * 20
    with pytest.raises(ValueError, match="temperature: must be 0 .greedy. or at least 0.01"):
        SamplingParams(max_tokens=1, temperature=1e-300)
    params = sampling_params(CompletionRequest(model=DEFAULT_MODEL_NAME, prompt="hi", temperature=temperature, seed=1), 4, vocab_size=512)
    assert params.temperature == MIN_SAMPLING_TEMPERATURE and not params.greedy
    tokens = sample(logits, [params] * 2, [0, 0])
    assert tokens == logits.argmax(dim=-1).tolist()  # at the floor, sampling is all but greedy
    zero = sampling_params(CompletionRequest(model=DEFAULT_MODEL_NAME, prompt="hi", temperature=0), 4, vocab_size=512)
    assert zero.greedy


finite = {"allow_nan": False, "allow_infinity": False}


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    temperature=st.one_of(st.none(), st.floats(0, 2, **finite), st.floats(0, 1e-30, **finite)),
    top_p=st.one_of(st.none(), st.floats(0, 1, exclude_min=True, **finite), st.floats(0, 1e-40, exclude_min=True, **finite)),
    top_k=st.one_of(st.none(), st.integers(-1, 1024)),
    seed=st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1)),
    min_p=st.one_of(st.none(), st.floats(-0.5, 1.5, **finite)),
    penalty=st.one_of(st.none(), st.floats(-3, 3, **finite)),
    repetition_penalty=st.one_of(st.none(), st.floats(-1, 3, **finite), st.floats(0, 1e-30, **finite), st.floats(50, 1e300, **finite)),
    bias=st.dictionaries(st.integers(0, 600).map(str), st.floats(-150, 150, **finite), max_size=3),
)
def test_every_sampling_request_the_router_accepts_the_sampler_survives(
    temperature, top_p, top_k, seed, min_p, penalty, repetition_penalty, bias
):
    """Whatever sampling fields pass the router's checks, the engine's sampler draws a token: a
    request that made it fail would fail every sequence in its batch."""
    import torch

    from router.sampling import sampling_params
    from workers.engine.sampler import SamplingRow, sample_rows

    body = CompletionRequest(
        model=DEFAULT_MODEL_NAME, prompt="hi", temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, min_p=min_p,
        presence_penalty=penalty, frequency_penalty=penalty, repetition_penalty=repetition_penalty, logit_bias=bias,
    )
    try:
        params = sampling_params(body, 4, vocab_size=512)
    except APIError:
        return
    logits = torch.randn(1, 512, generator=torch.Generator().manual_seed(1)) * 10
    # With a history, so that the penalties apply: a prompt of 3 tokens and 2 output tokens.
    row = SamplingRow(params, 2, token_ids=[5, 6, 7, 9, 9], num_prompt_tokens=3)
    [token] = sample_rows(logits, [row], eos_token_ids=[2]).tokens
    assert 0 <= token < 512
