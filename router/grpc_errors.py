"""gRPC statuses in Google's rich error model, from the one mapping HTTP uses (`router/errors.py`).

A client reads more than a code and a sentence from a refusal (`grpc_status.rpc_status.from_call`):

- `INVALID_ARGUMENT` carries a `google.rpc.BadRequest` whose field violation names the field,
  by the OpenAI name HTTP reports as `param`;
- `RESOURCE_EXHAUSTED` and `UNAVAILABLE` from overload carry a `google.rpc.RetryInfo` with the
  delay, and the trailing metadata `retry-after` (seconds, as HTTP's header) stays beside it;
- every refusal with an OpenAI `code` (`context_length_exceeded`, `images_not_supported`, ...)
  carries a `google.rpc.ErrorInfo` with it as the reason, so a program can branch on it.

All of it travels in the trailing metadata `grpc-status-details-bin`, which Ray Serve's proxy
passes on from the replica's context with a message — but not with an exception, and a
streaming method that fails has no message to send. So a failed stream also writes the status
into its context's details (`stream_failure_details`), which with the code are all that Ray
carries with the exception, and the proxy side of Pavana's service registration (`router/proto/lenient.py`) turns it back
into trailing metadata (`restore_stream_status`) before the status leaves the proxy.

Sizes: trailing metadata must fit the client's limit (8 KiB by default in gRPC), and Ray clips
details at 4096 characters; messages are clipped here so that all of it fits.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from router.errors import grpc_code_name, to_error_response

STATUS_DETAILS_KEY = "grpc-status-details-bin"
RETRY_AFTER_KEY = "retry-after"
ERROR_DOMAIN = "pavana"
# UTF-8 bytes; gRPC percent-encodes non-ASCII details, up to three characters a byte.
MAX_DETAILS_BYTES = 1000
MAX_DESCRIPTION_BYTES = 500
# Starts the details of a failed stream, followed by the base64 `google.rpc.Status`, a newline
# and the message. Never reaches a client (see the module docstring).
STREAM_STATUS_MARKER = "pavana-status-details-bin:"


@dataclass(frozen=True, slots=True)
class GRPCError:
    code: grpc.StatusCode
    message: str
    status: status_pb2.Status  # the rich status, with its details

    @property
    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return trailing_metadata(self.status)


def clip(text: str, limit_bytes: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit_bytes:
        return text
    return data[: limit_bytes - 3].decode("utf-8", errors="ignore") + "..."


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def grpc_error(exc: BaseException) -> GRPCError:
    """The gRPC status for any exception, as `to_error_response` maps it for HTTP."""
    err = to_error_response(exc)
    info = err.body["error"]
    code = getattr(grpc.StatusCode, grpc_code_name(err.status))
    message = clip(info["message"], MAX_DETAILS_BYTES)
    details: list[any_pb2.Any] = []
    if code == grpc.StatusCode.INVALID_ARGUMENT and info.get("param"):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=info["param"], description=clip(info["message"], MAX_DESCRIPTION_BYTES)
        )
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    retry_after = err.headers.get("Retry-After")
    if retry_after is not None:
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=int(retry_after)))))
    if info.get("code") is not None:
        reason = str(info["code"]).upper()
        details.append(_packed(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata={"type": str(info["type"])})))
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return GRPCError(code, message, status)


def trailing_metadata(status: status_pb2.Status) -> tuple[tuple[str, str | bytes], ...]:
    """`grpc-status-details-bin` and, with a `RetryInfo`, `retry-after` in whole seconds."""
    pairs: list[tuple[str, str | bytes]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            pairs.append((RETRY_AFTER_KEY, str(max(1, retry.retry_delay.seconds))))
    if status.details:
        pairs.append((STATUS_DETAILS_KEY, status.SerializeToString()))
    return tuple(pairs)


def set_grpc_error(grpc_context: Any, exc: BaseException) -> GRPCError:
    """Set code, details and trailing metadata on a replica's gRPC context."""
    error = grpc_error(exc)
    grpc_context.set_code(error.code)
    grpc_context.set_details(error.message)
    if error.trailing_metadata:
        grpc_context.set_trailing_metadata(list(error.trailing_metadata))
    return error


def stream_failure_details(error: GRPCError) -> str:
    """The details a failed stream sets on its context: the rich status travels inside them
    through Ray's exception path, to be restored by `restore_stream_status` in the proxy."""
    if not error.status.details:
        return error.message
    encoded = base64.b64encode(error.status.SerializeToString()).decode("ascii")
    return f"{STREAM_STATUS_MARKER}{encoded}\n{error.message}"


def restore_stream_status(grpc_context: Any) -> None:
    """In the proxy, after a stream ended: details written by `stream_failure_details` become
    the plain message again, and the status rides in the trailing metadata."""
    details = grpc_context.details()
    if isinstance(details, bytes):
        details = details.decode("utf-8", errors="replace")
    if not details or not details.startswith(STREAM_STATUS_MARKER):
        return
    encoded, _, message = details[len(STREAM_STATUS_MARKER):].partition("\n")
    grpc_context.set_details(message)
    try:
        status = status_pb2.Status.FromString(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError, DecodeError):  # clipped on the way: the message alone
        return
    kept = [(k, v) for k, v in (grpc_context.trailing_metadata() or ()) if k not in (STATUS_DETAILS_KEY, RETRY_AFTER_KEY)]
    grpc_context.set_trailing_metadata(tuple(kept) + trailing_metadata(status))
