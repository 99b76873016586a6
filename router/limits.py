"""Bounds on what one request may carry, checked before any costly work is done for it.

Ray Serve's HTTP proxy (uvicorn with httptools) enforces no limit of its own on header size,
header count or body size, and its gRPC proxy accepts messages up to 2 GiB. Without bounds a
single request can hold the ingress's event loop for seconds (tokenizing megabytes of text)
or its memory (a body of any size). So the ingress refuses, each with OpenAI's error body:

- headers over `max_headers` or `max_header_bytes`: 431, before the body is read;
- a body over `max_body_bytes`: 413, from `Content-Length` before reading a byte, or as soon
  as a chunked body passes the limit;
- a body still incomplete after `body_timeout_s` (a client that trickles or stalls): 408;
- a gRPC message over `max_grpc_message_bytes`: gRPC's `RESOURCE_EXHAUSTED`;
- more than `max_images` images, or an image data URL over `max_image_url_chars`: 400;
- a prompt with more characters than the context can possibly hold: 400, without tokenizing.

The last bound is exact in one direction: a token never covers more characters of the text
than its own string in the vocabulary has (a byte-level token's string has one character per
byte), so a text of more than `context x longest token` characters cannot fit. A factor of
`PROMPT_CHARS_SLACK` covers normalizers that merge characters before tokenizing.

`RequestLimitsMiddleware` is plain ASGI and the checks are plain functions: no Ray here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from router.errors import INVALID_REQUEST, APIError

MiB = 1024 * 1024
PROMPT_CHARS_SLACK = 2

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """The defaults fit OpenAI-style traffic: a long prompt is a few hundred KiB of JSON, and
    a handful of photos as data URLs fit in the body limit."""

    max_body_bytes: int = 8 * MiB
    max_headers: int = 100
    max_header_bytes: int = 32 * 1024  # names and values together
    max_grpc_message_bytes: int = 8 * MiB
    max_images: int = 16
    max_image_url_chars: int = 6 * MiB
    body_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        bad = {f.name: getattr(self, f.name) for f in fields(self) if not getattr(self, f.name) > 0}
        if bad:
            raise ValueError(f"RequestLimits: every limit must be > 0, got {bad}")


DEFAULT_LIMITS = RequestLimits()


def body_too_large(limit: int, size: int | None = None) -> APIError:
    said = f"{size} bytes" if size is not None else "more"
    return APIError(
        413,
        f"The request body is {said}; this server accepts at most {limit} bytes ({limit / MiB:g} MiB)",
        code="request_too_large",
    )


# -- headers and body (ASGI) ------------------------------------------------------------------------
def header_refusal(headers: Sequence[tuple[bytes, bytes]], limits: RequestLimits) -> APIError | None:
    """A 431 for too many or too large headers; None when they are within the limits."""
    if len(headers) > limits.max_headers:
        return APIError(431, f"The request has {len(headers)} headers; the limit is {limits.max_headers}", code="headers_too_large")
    size = sum(len(name) + len(value) for name, value in headers)
    if size > limits.max_header_bytes:
        return APIError(431, f"The request headers are {size} bytes; the limit is {limits.max_header_bytes}", code="headers_too_large")
    return None


def declared_length(headers: Sequence[tuple[bytes, bytes]]) -> tuple[bool, int | None]:
    """(whether the request has a body, its `Content-Length` when one is given). A request
    with neither `Content-Length` nor `Transfer-Encoding` has no body (RFC 9112, 6.3)."""
    length: int | None = None
    chunked = False
    for name, value in headers:
        name = name.lower()
        if name == b"content-length":
            text = value.strip()
            if not text.isdigit():
                raise APIError(400, f"The Content-Length header must be a number of bytes, got {value[:40]!r}")
            length = int(text)
        elif name == b"transfer-encoding":
            chunked = True
    return (chunked or bool(length)), length


async def send_error(send: Send, err: APIError) -> None:
    """OpenAI's error body as a complete response; the connection closes after it, since the
    rest of a refused body may still be on the wire."""
    payload = json.dumps(err.body()).encode()
    await send({
        "type": "http.response.start",
        "status": err.status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),
        ],
    })
    await send({"type": "http.response.body", "body": payload, "more_body": False})


class RequestLimitsMiddleware:
    """Refuses over-limit headers and bodies before the application sees the request.

    A body is read here, up to the limit, and handed on whole: the OpenAI routes read the
    whole body anyway, and reading it first is what makes a 413 possible for a chunked body
    (an application that had begun to read it could only fail). Later `receive` calls go to
    the server, so the application still hears of a client that disconnects."""

    def __init__(self, app: ASGIApp, limits: RequestLimits = DEFAULT_LIMITS) -> None:
        self.app = app
        self.limits = limits

    def limits_for(self, scope: Scope) -> RequestLimits:
        """The application's own limits when it has set them (`app.state.request_limits`, for
        limits that come from configuration after the middleware is installed), else these."""
        state = getattr(scope.get("app"), "state", None)
        limits = getattr(state, "request_limits", None)
        return limits if isinstance(limits, RequestLimits) else self.limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        limits = self.limits_for(scope)
        try:
            refusal = header_refusal(headers, limits)
            if refusal is not None:
                raise refusal
            has_body, length = declared_length(headers)
            if length is not None and length > limits.max_body_bytes:
                raise body_too_large(limits.max_body_bytes, length)
            body = await _read_body(receive, limits) if has_body else None
        except APIError as err:
            await send_error(send, err)
            return
        except _Disconnected:
            return  # the client left before sending its body: there is no one to answer
        if body is None:
            await self.app(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


class _Disconnected(Exception):
    pass


async def _read_body(receive: Receive, limits: RequestLimits) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limits.max_body_bytes:
                    raise body_too_large(limits.max_body_bytes)
                parts.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(parts)
    except TimeoutError:
        raise APIError(
            408,
            f"The request body did not arrive within {limits.body_timeout_s:g} s ({size} bytes came)",
            code="request_timeout",
        ) from None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# -- gRPC ---------------------------------------------------------------------------------------------
def check_grpc_message(size: int, limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """A gRPC request message over the limit: `RESOURCE_EXHAUSTED` (413 in the one mapping of
    `router/errors.py`), before its prompt is tokenized."""
    if size > limits.max_grpc_message_bytes:
        raise APIError(
            413,
            f"The request message is {size} bytes; this server accepts at most {limits.max_grpc_message_bytes} bytes",
            code="request_too_large",
        )


# -- images -------------------------------------------------------------------------------------------
def check_image_urls(urls: Sequence[tuple[str, str]], limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """(url, param) pairs in prompt order: the count and each URL's size, before any is decoded."""
    if len(urls) > limits.max_images:
        raise APIError(
            400,
            f"messages: {len(urls)} images in one request; the limit is {limits.max_images}",
            param="messages",
            code="too_many_images",
        )
    for url, param in urls:
        if len(url) > limits.max_image_url_chars:
            raise APIError(
                400,
                f"{param}: the image URL is {len(url)} characters; the limit is {limits.max_image_url_chars} "
                f"(about {limits.max_image_url_chars * 3 // 4 // MiB} MiB of image)",
                param=param,
                code="image_too_large",
            )


# -- prompts ------------------------------------------------------------------------------------------
def prompt_char_limit(max_model_len: int, vocabulary: Iterable[str]) -> int:
    """The most characters a prompt that fits in `max_model_len` tokens can have (see the module
    docstring), from the token strings of the tokenizer's vocabulary."""
    longest = max((len(token) for token in vocabulary), default=1)
    return max_model_len * max(longest, 1) * PROMPT_CHARS_SLACK


def check_prompt_chars(num_chars: int, max_chars: int, *, param: str, max_model_len: int) -> None:
    if num_chars > max_chars:
        raise APIError(
            400,
            f"{param}: this model's maximum context length is {max_model_len} tokens, and the prompt has "
            f"{num_chars} characters, more than that many tokens can hold; shorten the prompt",
            type=INVALID_REQUEST,
            param=param,
            code="context_length_exceeded",
        )
