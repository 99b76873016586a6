"""Size limits and request bounds of the HTTP API on a real application: bodies, headers,
prompts beyond the context, `max_tokens`, `n` and `logprobs` out of range. Every refusal is
OpenAI's error body with the status and field named; the application answers a plain
request after each.

Ray Serve's HTTP proxy (uvicorn with httptools) enforces no header or body size of its own:
a 1 MiB header and a 64 MiB body reach the application, so `router/limits.py` is what
refuses them. Only a request that is not HTTP at all is refused by the proxy itself. With the
HAProxy ingress (`PAVANA_TEST_INGRESS=haproxy`), HAProxy also refuses headers beyond its buffer.
"""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from router.limits import DEFAULT_LIMITS, MiB
from tests.conftest import test_ingress
from tests.reliability.conftest import CONTEXT_TOKENS, HostileApp

pytestmark = [pytest.mark.ray, pytest.mark.redis]


@pytest.fixture(scope="module")
def client(hostile_app: HostileApp):
    with httpx.Client(base_url=hostile_app.base_url, headers=hostile_app.auth, timeout=60) as client:
        yield client


@pytest.fixture()
def still_serving(client, hostile_app):
    """After the test, a plain request still gets its answer."""
    yield
    body = {"model": hostile_app.model, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
    response = client.post("/completions", json=body)
    assert response.status_code == 200, response.text


def assert_error(response: httpx.Response, status: int, *, code: str | None = None, param: str | None = None, says: str = "") -> dict:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert code is None or error["code"] == code, error
    assert param is None or error["param"] == param, error
    assert says in error["message"], error
    return error


# -- bodies and headers ---------------------------------------------------------------------------------
def test_a_body_over_the_limit_is_refused(client, still_serving):
    body = b'{"model": "' + b"m" * (DEFAULT_LIMITS.max_body_bytes + 1) + b'"}'
    started = time.monotonic()
    response = client.post("/completions", content=body, headers={"content-type": "application/json"})
    assert_error(response, 413, code="request_too_large", says=f"at most {DEFAULT_LIMITS.max_body_bytes} bytes")
    assert time.monotonic() - started < 15


def test_a_chunked_body_over_the_limit_is_refused(client, still_serving):
    def pieces():
        for _ in range(DEFAULT_LIMITS.max_body_bytes // MiB + 2):
            yield b" " * MiB

    response = client.post("/completions", content=pieces(), headers={"content-type": "application/json"})
    assert_error(response, 413, code="request_too_large")


def test_a_body_within_the_limit_with_a_prompt_no_context_can_hold(client, hostile_app, still_serving):
    """7 MB of prompt: refused from its length in characters, without being tokenized (which
    took about 9 s of the ingress's event loop here, stalling every other request)."""
    body = {"model": hostile_app.model, "prompt": "wind over the hills " * 350_000, "max_tokens": 1}
    started = time.monotonic()
    response = client.post("/completions", json=body)
    assert_error(response, 400, code="context_length_exceeded", param="prompt", says="characters")
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"x-big": "v" * (DEFAULT_LIMITS.max_header_bytes + 1)}, "bytes; the limit is"),
        ({f"x-h{i}": "v" for i in range(DEFAULT_LIMITS.max_headers + 1)}, "headers; the limit is"),
    ],
    ids=["one header over the size", "too many headers"],
)
def test_headers_over_the_limits_are_refused(client, headers, says, still_serving):
    response = client.get("/models", headers=headers)
    assert_error(response, 431, code="headers_too_large", says=says)


def test_a_1_mib_header(client, still_serving):
    """Through Ray Serve's proxy it reaches the application, which answers 431. HAProxy holds
    headers up to its buffer (`controller/haproxy_config.py`, 64 KiB) and refuses larger ones
    itself: 400, with HAProxy 2.8's own page (it ignores the error file there,
    haproxy/haproxy#3032), and the connection closed."""
    response = client.get("/models", headers={"x-huge": "v" * MiB})
    if test_ingress().startswith("haproxy"):
        assert response.status_code == 400 and response.headers.get("connection") == "close", response.text[:300]
    else:
        assert_error(response, 431, code="headers_too_large", says="bytes; the limit is")


def test_what_the_proxy_refuses_itself(hostile_app):
    """Bytes that are not HTTP never reach the application: uvicorn answers 400 and closes."""
    url = urlsplit(hostile_app.root_url)
    for request in (b"NOT HTTP AT ALL\r\n\r\n", b"POST /hostile/v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"):
        with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


# -- prompts and generation bounds ----------------------------------------------------------------------
def test_prompts_beyond_the_context(client, hostile_app, still_serving):
    m = hostile_app.model
    response = client.post("/completions", json={"model": m, "prompt": [5] * CONTEXT_TOKENS, "max_tokens": 1})
    assert_error(response, 400, code="context_length_exceeded", param="prompt", says=f"{CONTEXT_TOKENS} tokens")
    response = client.post("/completions", json={"model": m, "prompt": "wind " * CONTEXT_TOKENS, "max_tokens": 1})
    assert_error(response, 400, code="context_length_exceeded", param="prompt")
    messages = [{"role": "user", "content": "wind " * CONTEXT_TOKENS}]
    response = client.post("/chat/completions", json={"model": m, "messages": messages})
    assert_error(response, 400, code="context_length_exceeded", param="messages")


def test_a_quarter_million_empty_messages(client, hostile_app, still_serving):
    """Short as text, millions of characters once rendered: refused before tokenizing (which
    took about 5 s of the ingress's event loop here)."""
    body = {"model": hostile_app.model, "messages": [{"role": "user", "content": ""}] * 250_000, "max_tokens": 1}
    started = time.monotonic()
    response = client.post("/chat/completions", json=body)
    assert_error(response, 400, code="context_length_exceeded", param="messages", says="characters")
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"max_tokens": 0}, "max_tokens", "at least 1"),
        ({"max_tokens": -7}, "max_tokens", "at least 1"),
        ({"max_tokens": 10**30}, "max_tokens", "at most"),
        ({"max_tokens": CONTEXT_TOKENS}, "max_tokens", "at most"),
        ({"max_tokens": 2.5}, "max_tokens", "valid integer"),
        ({"max_tokens": "8"}, "max_tokens", "valid integer"),
        ({"n": 129}, "n", "[1, 128]"),
        ({"n": 0}, "n", "[1, 128]"),
        ({"logprobs": 21}, "logprobs", "[0, 20]"),
        ({"logprobs": True}, "logprobs", "valid integer"),
        ({"best_of": 3}, "best_of", "equal to n"),
        ({"suffix": "end"}, "suffix", "not supported"),
        ({"temperature": 2.5}, "temperature", "[0, 2]"),
        ({"top_p": 0}, "top_p", "(0, 1]"),
        ({"seed": 2**70}, "seed", "64 bits"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ],
)
def test_completion_bounds(client, hostile_app, fields, param, says, still_serving):
    body = {"model": hostile_app.model, "prompt": "Hello", "max_tokens": 2, **fields}
    assert_error(client.post("/completions", json=body), 400, param=param, says=says)


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"max_completion_tokens": 0}, "max_completion_tokens"), ({"n": 0}, "n"), ({"top_logprobs": 3}, "top_logprobs"), ({"max_tokens": -1}, "max_tokens")],
)
def test_chat_bounds(client, hostile_app, fields, param, still_serving):
    body = {"model": hostile_app.model, "messages": [{"role": "user", "content": "Hi"}], **fields}
    assert_error(client.post("/chat/completions", json=body), 400, param=param)


@pytest.mark.parametrize(
    "fields",
    [{"temperature": 5e-324}, {"temperature": 1e-40}, {"top_p": 5e-324}, {"top_p": 1e-300, "temperature": 1.0}],
    ids=["temperature 5e-324", "temperature 1e-40", "top_p 5e-324", "top_p 1e-300"],
)
def test_sampling_values_at_the_edge_of_float32_are_served(client, hostile_app, fields):
    """Passed to the sampler as they are, each of these turns its probabilities into NaN, which
    fails every request in the replica's batch and leaves its engine dead until Serve replaces
    the replica; the router raises them to floors that sample the same tokens."""
    body = {"model": hostile_app.model, "prompt": "Hello", "max_tokens": 3, "seed": 7, **fields}
    for _ in range(2):
        response = client.post("/completions", content=json.dumps(body), headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] >= 1
