"""Pavana's gRPC service as Ray Serve's gRPC proxy registers it, with two differences from the
generated `add_PavanaServicer_to_server`:

- a request whose bytes do not parse is not an error in the proxy (which would answer
  `UNKNOWN`) but reaches the ingress as a `Malformed` value, which it refuses with
  `INVALID_ARGUMENT` and the parser's reason, like any other bad input;
- a failed stream's rich status (`google.rpc.Status` with `BadRequest` or `RetryInfo`), which
  Ray's proxy would drop, reaches the client in the trailing metadata
  (`router/grpc_errors.py` says how).

This function runs in the proxy (Ray Serve calls every function named in
`gRPCOptions.grpc_servicer_functions` on the server it builds there); the servicer it is given
is a placeholder, since the proxy replaces each method with a call to the ingress replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from router.grpc_errors import restore_stream_status
from router.proto import pavana_pb2 as pb

SERVICE = "pavana.v1.Pavana"
MAX_REASON_CHARS = 200


@dataclass(frozen=True, slots=True)
class Malformed:
    """Request bytes that are not a valid message of the method's type."""

    message_type: str
    reason: str


def lenient(message: type) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except (DecodeError, ValueError, UnicodeDecodeError) as exc:
            return Malformed(message.DESCRIPTOR.full_name, str(exc)[:MAX_REASON_CHARS] or type(exc).__name__)

    return parse


def _restoring_stream_status(stream: Callable[[Any, Any], AsyncIterator[Any]]) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def handler(request: Any, context: Any) -> AsyncIterator[Any]:
        async for message in stream(request, context):
            yield message
        restore_stream_status(context)

    return handler


def add_PavanaServicer_to_server(servicer: Any, server: Any) -> None:  # noqa: N802 (gRPC's naming)
    handlers = {
        "Generate": grpc.unary_unary_rpc_method_handler(
            servicer.Generate, request_deserializer=lenient(pb.GenerateRequest), response_serializer=pb.GenerateResponse.SerializeToString
        ),
        "GenerateStream": grpc.unary_stream_rpc_method_handler(
            servicer.GenerateStream, request_deserializer=lenient(pb.GenerateRequest), response_serializer=pb.GenerateResponse.SerializeToString
        ),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels, request_deserializer=lenient(pb.ListModelsRequest), response_serializer=pb.ListModelsResponse.SerializeToString
        ),
    }
    generic = grpc.method_handlers_generic_handler(SERVICE, handlers)
    server.add_generic_rpc_handlers((generic,))
    # Ray's server has just replaced each handler's behaviour with its call to the replica
    # (`gRPCGenericServer.add_generic_rpc_handlers` rewrites the handler's `_method_handlers`);
    # the stream's is wrapped once more, around Ray's. The registered-method table
    # (`add_registered_method_handlers`), which gRPC would consult before this generic handler,
    # is left empty so that the wrapped handler is the one that runs.
    method = f"/{SERVICE}/GenerateStream"
    ray_stream = generic._method_handlers[method]
    generic._method_handlers = {**generic._method_handlers, method: ray_stream._replace(unary_stream=_restoring_stream_status(ray_stream.unary_stream))}
