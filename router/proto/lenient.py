"""Pavana's gRPC service as Ray Serve's gRPC proxy registers it, with one difference from the
generated `add_PavanaServicer_to_server`: a request whose bytes do not parse is not an error in
the proxy (which would answer `UNKNOWN`) but reaches the ingress as a `Malformed` value, which
it refuses with `INVALID_ARGUMENT` and the parser's reason, like any other bad input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

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
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
