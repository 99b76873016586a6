"""Pavana's gRPC API (`pavana.v1.Pavana`) and the standard health service, as methods of the
ingress deployment.

Ray Serve's gRPC proxy calls a deployment's methods by name (`/pavana.v1.Pavana/Generate`
calls `Generate`) with the request proto and a `grpc_context`; streaming methods are async
generators. `GRPCMethods` is mixed into `router.ingress.Ingress`, whose pipeline (validate ▸
authenticate ▸ prepare ▸ admit ▸ run the stages) it shares with HTTP: a gRPC request is turned
into the equivalent OpenAI body (`router/grpc_messages.py`) and checked by the same models and
`PromptBuilder`, so both protocols have one set of defaults, fields and refusals. Refusals
carry Google's rich error details (`router/grpc_errors.py`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from router.admission import QOS_HEADER
from router.errors import APIError, invalid_request, validated
from router.formats import ChatFormat, CompletionFormat, format_for
from router.grpc_errors import set_grpc_error, stream_failure_details
from router.grpc_messages import CHAT, Answer, openai_body
from router.limits import check_grpc_message
from router.prompt import PreparedRequest
from router.proto import pavana_pb2 as pb
from router.proto.lenient import Malformed
from router.protocol import ChatCompletionRequest, CompletionRequest
from workers.requests import TokenChunk

GRPC_SERVICE = "pavana.v1.Pavana"
HEALTH_WATCH_PERIOD_S = 5.0


def _refuse_malformed(request: Any) -> None:
    """Bytes that did not parse reach the ingress as `Malformed` (`router/proto/lenient.py`)."""
    if isinstance(request, Malformed):
        raise invalid_request(f"request: not a valid {request.message_type} message ({request.reason})", param="request")


class _GRPCFailure(Exception):
    """Raised by a streaming gRPC method after setting the status on its context: the proxy
    applies a context's status only with a message or an exception, and an error has no
    message to send. Its details carry the rich status (`router/grpc_errors.py`)."""


class GRPCMethods:
    """The gRPC methods of the ingress; `self` is the `Ingress` replica."""

    # -- gRPC: pavana.v1.Pavana ----------------------------------------------------------------
    async def Generate(self, request: pb.GenerateRequest, grpc_context: Any) -> pb.GenerateResponse:
        choices: AsyncIterator[tuple[int, TokenChunk]] | None = None
        try:
            prepared, answer = self._prepare_grpc(request, grpc_context)
            choices = self.generate_choices(prepared)
            async for index, chunk in choices:
                answer.add(index, chunk)
            return answer.response()
        except Exception as exc:
            set_grpc_error(grpc_context, exc)
            return pb.GenerateResponse()
        finally:
            if choices is not None:
                await choices.aclose()

    async def GenerateStream(self, request: pb.GenerateRequest, grpc_context: Any) -> AsyncIterator[pb.GenerateResponse]:
        choices: AsyncIterator[tuple[int, TokenChunk]] | None = None
        try:
            prepared, answer = self._prepare_grpc(request, grpc_context)
            choices = self.generate_choices(prepared)
            async for index, chunk in choices:
                yield answer.message(index, chunk)
        except Exception as exc:
            # Ray carries the context's code and details with the exception, nothing more.
            details = stream_failure_details(set_grpc_error(grpc_context, exc))
            grpc_context.set_details(details)
            raise _GRPCFailure(details) from None
        finally:
            if choices is not None:
                await choices.aclose()

    async def ListModels(self, request: pb.ListModelsRequest, grpc_context: Any) -> pb.ListModelsResponse:
        try:
            self.keys.check_grpc(grpc_context.invocation_metadata())
            _refuse_malformed(request)
        except APIError as exc:
            set_grpc_error(grpc_context, exc)
            return pb.ListModelsResponse()
        model = pb.Model(id=self.facts.name, owned_by="pavana", max_model_len=self.facts.max_model_len, vision=self.facts.vision)
        return pb.ListModelsResponse(models=[model])

    def _prepare_grpc(self, request: pb.GenerateRequest, grpc_context: Any) -> tuple[PreparedRequest, Answer]:
        """A gRPC request through the same checks as HTTP (API key, QoS class from the metadata,
        then the equivalent OpenAI body); returns the prepared request and its answer's builder."""
        metadata = list(grpc_context.invocation_metadata())
        key = self.keys.check_grpc(metadata)
        _refuse_malformed(request)
        requested = next((str(v) for k, v in metadata if k.lower() == QOS_HEADER), None)
        qos_class = self._qos_class(requested, key)
        check_grpc_message(request.ByteSize())
        endpoint, fields = openai_body(request, self.facts.name)
        if endpoint == CHAT:
            body = validated(ChatCompletionRequest, fields)
            prepared = self.prompts.chat(body, f"chatcmpl-{uuid.uuid4().hex}")
        else:
            body = validated(CompletionRequest, fields)
            prepared = self.prompts.completion(body, f"cmpl-{uuid.uuid4().hex}")
        prepared = self._classed(prepared, qos_class)
        fmt = format_for(ChatFormat if endpoint == CHAT else CompletionFormat, prepared, body.model, self.texts)
        return prepared, Answer(fmt, prepared)

    # -- gRPC: grpc.health.v1.Health -----------------------------------------------------------
    # Probes send no API key: health answers without one, and says no more than the status.
    async def Check(self, request: health_pb2.HealthCheckRequest, grpc_context: Any) -> health_pb2.HealthCheckResponse:
        if request.service not in ("", GRPC_SERVICE):
            grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
            grpc_context.set_details(f"unknown service {request.service!r}; this server serves '{GRPC_SERVICE}'")
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=await self._health_status())

    async def Watch(self, request: health_pb2.HealthCheckRequest, grpc_context: Any) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        if request.service not in ("", GRPC_SERVICE):
            # The health protocol's Watch answers SERVICE_UNKNOWN rather than failing.
            yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            return
        last = None
        while True:
            status = await self._health_status()
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(HEALTH_WATCH_PERIOD_S)

    async def List(self, request: health_pb2.HealthListRequest, grpc_context: Any) -> health_pb2.HealthListResponse:
        status = await self._health_status()
        response = health_pb2.HealthListResponse()
        for name in ("", GRPC_SERVICE):
            response.statuses[name].status = status
        return response

    async def _health_status(self) -> int:
        ready, _ = await self._pools_ready()
        return health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
