"""Errors as the API reports them: one exception type for the router's own refusals, and one
function that turns any exception into an HTTP status and OpenAI's error body.

The gRPC methods use the same mapping and translate the status (`grpc_code`), so a bad request
reads the same over both protocols. Exceptions from pools reach the router wrapped by Ray
(`RayTaskError` subclasses the original type and keeps it as `.cause`), so the mapping looks
through that wrapper and reports the pool's own message, not Ray's traceback.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from router.protocol import UNSUPPORTED_FIELDS, ErrorBody, ErrorInfo

log = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
OVERLOADED = "overloaded_error"
SERVER_ERROR = "server_error"

# "field: what is wrong" is how Pavana's engine and validators phrase a `ValueError`; the
# prefix becomes OpenAI's `param`. Dots and brackets allow `messages[0].content[1]`.
_PARAM_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]]*):\s")


class APIError(Exception):
    """A refusal the router decides itself, carried to the client as it is."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, type=INVALID_REQUEST, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(404, f"The model '{model}' does not exist", type=NOT_FOUND, param="model", code="model_not_found")


def unauthorized(message: str) -> APIError:
    return APIError(401, message, type=AUTHENTICATION, code="invalid_api_key")


def from_validation_errors(errors: list[dict[str, Any]]) -> APIError:
    """A 400 from pydantic's (or FastAPI's) validation errors: the first error names `param`,
    the message lists them all, as `loc: msg` lines a person can act on."""
    if not errors:
        return invalid_request("The request body is invalid.")
    lines: dict[str, str] = {}
    for err in errors:
        if err.get("type") == "json_invalid":
            lines["json"] = f"The request body is not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"
            continue
        loc = [part for part in err.get("loc", ()) if part != "body"]
        path = _field_path(loc)
        where = _format_loc(path)
        if where in lines:  # a union's other members failing too: the first reason is enough
            continue
        is_union_member = len(path) < len(loc)
        if err.get("type") == "extra_forbidden":
            reason = _unknown_field_reason(path)
        elif is_union_member:
            reason = f"matches none of its accepted forms (as {loc[len(path)]}: {err.get('msg')})"
        else:
            reason = err.get("msg")
        lines[where] = f"{where}: {reason}" if where else str(reason)
    first_loc = [part for part in errors[0].get("loc", ()) if part != "body"]
    param = _format_loc(_field_path(first_loc)) or None
    return invalid_request("; ".join(lines.values()), param=param)


def validated(model: type, data: bytes | dict[str, Any]) -> Any:
    """A request body (JSON bytes or a dict) as `model`, or the 400 that names what is wrong."""
    from pydantic import ValidationError

    try:
        return model.model_validate_json(data) if isinstance(data, bytes) else model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_errors(list(exc.errors())) from None


def _unknown_field_reason(path: list[Any]) -> str:
    """Why a field the request models do not declare is refused: OpenAI's fields that Pavana
    does not implement say so; anything else is unknown (misspelt, or another server's)."""
    if len(path) == 1 and path[0] in UNSUPPORTED_FIELDS:
        return f"{UNSUPPORTED_FIELDS[path[0]]} (Pavana refuses what it does not implement rather than ignoring it)"
    return "unknown field; Pavana refuses fields it does not implement rather than ignoring them"


def _field_path(loc: list[Any]) -> list[Any]:
    # pydantic appends union members and discriminator tags (`str`, `list[int]`, `text`,
    # a model's class name such as `NamedToolChoice`) to a location; a client wants the field
    # it sent. OpenAI's field names are all lower case.
    path: list[Any] = []
    for depth, part in enumerate(loc):
        # The first part is always a field of the body (a body that is no object has no loc).
        if depth and isinstance(part, str) and ("[" in part or part in _TYPE_TAGS or part[:1].isupper()):
            break
        path.append(part)
    return path


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "text", "image_url", "function-after", "json_invalid"})


def _format_loc(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# A message quotes what the client sent (a media type, a field's value); clipped, so that a
# hostile request of megabytes is not echoed back in full.
MAX_MESSAGE_CHARS = 2000


def error_body(message: str, type: str, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    """OpenAI's error body, `{"error": {"message", "type", "param", "code"}}`."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + f"... ({len(message) - MAX_MESSAGE_CHARS} more characters)"
    return ErrorBody(error=ErrorInfo(message=message, type=type, param=param, code=code)).model_dump()


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def message(self) -> str:
        return self.body["error"]["message"]


def unwrap(exc: BaseException) -> BaseException:
    """The original exception behind Ray's task-error wrappers."""
    seen = 0
    while seen < 8 and isinstance(getattr(exc, "cause", None), BaseException):
        exc = exc.cause  # type: ignore[assignment]
        seen += 1
    return exc


def _param_of(message: str) -> str | None:
    match = _PARAM_PREFIX.match(message)
    return match.group(1) if match else None


def _retry_after_s(exc: BaseException) -> float | None:
    # `EngineOverloaded` carries `retry_after_s`; read by attribute so that this module (and
    # the router process) need not import the engine, hence torch, to recognise it.
    value = getattr(exc, "retry_after_s", None)
    return float(value) if isinstance(value, int | float) else None


def to_error_response(exc: BaseException) -> ErrorResponse:
    """Map an exception to (status, OpenAI error body, headers).

    - `APIError`: as it says;
    - `ValueError` (bad input found by the router, a pool or the engine): 400;
    - overload — an engine's full queue (`EngineOverloaded`, `OverflowError`) or Serve's own
      back-pressure and unavailable replicas: 503 with `Retry-After`;
    - anything else: 500, logged with its traceback, its text kept out of the body.
    """
    if isinstance(exc, APIError):
        return ErrorResponse(exc.status, exc.body(), dict(exc.headers))
    original = unwrap(exc)
    if isinstance(original, APIError):
        return to_error_response(original)
    retry_after = _retry_after_s(original)
    if retry_after is not None or isinstance(original, OverflowError) or type(original).__name__ in _SERVE_OVERLOAD:
        seconds = max(1, math.ceil(retry_after if retry_after is not None else 1.0))
        message = str(original) or type(original).__name__
        return ErrorResponse(503, error_body(f"The server is overloaded: {message}", OVERLOADED, None, "overloaded"), {"Retry-After": str(seconds)})
    if isinstance(original, ValueError):
        message = str(original)
        return ErrorResponse(400, error_body(message, INVALID_REQUEST, _param_of(message)))
    log.error("unexpected error serving a request", exc_info=exc)
    return ErrorResponse(500, error_body("The server had an error while processing your request.", SERVER_ERROR, None, "internal_error"))


# Ray Serve's exceptions for a full or missing deployment, matched by name so that this
# module imports no Ray.
_SERVE_OVERLOAD = frozenset({"BackPressureError", "DeploymentUnavailableError"})


def grpc_code_name(status: int) -> str:
    """The `grpc.StatusCode` member name for an HTTP status (gRPC's HTTP mapping, reversed)."""
    return {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        413: "RESOURCE_EXHAUSTED",
        422: "INVALID_ARGUMENT",
        429: "RESOURCE_EXHAUSTED",
        503: "UNAVAILABLE",
    }.get(status, "INTERNAL")
