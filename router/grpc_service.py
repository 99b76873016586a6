"""Pavana's gRPC API (`pavana.v1.Pavana`) and the standard health service, as methods of the
ingress deployment.

Ray Serve's gRPC proxy calls a deployment's methods by name (`/pavana.v1.Pavana/Generate`
calls `Generate`) with the request proto and a `grpc_context`; streaming methods are async
generators. `GRPCMethods` is mixed into `router.ingress.Ingress`, whose pipeline (validate ▸
authenticate ▸ prepare ▸ admit ▸ run the stages) it shares with HTTP: a gRPC request is turned
into the equivalent OpenAI body and checked by the same `PromptBuilder`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from pydantic import BaseModel, ValidationError

from router.admission import QOS_HEADER
from router.errors import APIError, from_validation_errors, grpc_code_name, invalid_request, to_error_response
from router.formats import Collected
from router.limits import check_grpc_message
from router.prompt import PreparedRequest
from router.proto import pavana_pb2 as pb
from router.proto.lenient import Malformed
from router.protocol import ChatCompletionRequest, CompletionRequest
from workers.requests import TokenChunk

GRPC_SERVICE = "pavana.v1.Pavana"
HEALTH_WATCH_PERIOD_S = 5.0
GRPC_DEFAULT_MAX_TOKENS = 16


def _validated(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_errors(list(exc.errors())) from None


def _refuse_malformed(request: Any) -> None:
    """Bytes that did not parse reach the ingress as `Malformed` (`router/proto/lenient.py`)."""
    if isinstance(request, Malformed):
        raise invalid_request(f"request: not a valid {request.message_type} message ({request.reason})", param="request")


class _GRPCFailure(Exception):
    """Raised by a streaming gRPC method after setting the status on its context: the proxy
    applies a context's status only with a message or an exception, and an error has no
    message to send."""


def _grpc_usage(num_prompt_tokens: int, num_output_tokens: int) -> pb.Usage:
    return pb.Usage(prompt_tokens=num_prompt_tokens, completion_tokens=num_output_tokens, total_tokens=num_prompt_tokens + num_output_tokens)


def _set_grpc_error(grpc_context: Any, exc: BaseException) -> None:
    err = to_error_response(exc)
    grpc_context.set_code(getattr(grpc.StatusCode, grpc_code_name(err.status)))
    grpc_context.set_details(err.message)
    if "Retry-After" in err.headers:
        grpc_context.set_trailing_metadata([("retry-after", err.headers["Retry-After"])])



class GRPCMethods:
    """The gRPC methods of the ingress; `self` is the `Ingress` replica."""

    # -- gRPC: pavana.v1.Pavana ----------------------------------------------------------------
    async def Generate(self, request: pb.GenerateRequest, grpc_context: Any) -> pb.GenerateResponse:
        try:
            prepared = self._prepare_grpc(request, grpc_context)
            collected = Collected()
            async for chunk in self._generate(prepared):
                collected.add(chunk)
        except Exception as exc:
            _set_grpc_error(grpc_context, exc)
            return pb.GenerateResponse()
        return pb.GenerateResponse(
            id=prepared.request.request_id,
            text="".join(collected.text),
            token_ids=collected.token_ids,
            finish_reason=collected.finish_reason or "",
            usage=_grpc_usage(prepared.request.num_prompt_tokens, len(collected.token_ids)),
        )

    async def GenerateStream(self, request: pb.GenerateRequest, grpc_context: Any) -> AsyncIterator[pb.GenerateResponse]:
        stream: AsyncIterator[TokenChunk] | None = None
        try:
            prepared = self._prepare_grpc(request, grpc_context)
            num_output_tokens = 0
            stream = self._generate(prepared)
            async for chunk in stream:
                num_output_tokens += len(chunk.token_ids)
                message = pb.GenerateResponse(id=prepared.request.request_id, text=chunk.text, token_ids=chunk.token_ids)
                if chunk.finished:
                    message.finish_reason = chunk.finish_reason or ""
                    message.usage.CopyFrom(_grpc_usage(prepared.request.num_prompt_tokens, num_output_tokens))
                yield message
        except Exception as exc:
            _set_grpc_error(grpc_context, exc)
            raise _GRPCFailure(grpc_context.details()) from None
        finally:
            if stream is not None:
                await stream.aclose()

    async def ListModels(self, request: pb.ListModelsRequest, grpc_context: Any) -> pb.ListModelsResponse:
        try:
            self.keys.check_grpc(grpc_context.invocation_metadata())
            _refuse_malformed(request)
        except APIError as exc:
            _set_grpc_error(grpc_context, exc)
            return pb.ListModelsResponse()
        model = pb.Model(id=self.facts.name, owned_by="pavana", max_model_len=self.facts.max_model_len, vision=self.facts.vision)
        return pb.ListModelsResponse(models=[model])

    def _prepare_grpc(self, request: pb.GenerateRequest, grpc_context: Any) -> PreparedRequest:
        """A gRPC request through the same checks as HTTP (API key, QoS class from the metadata,
        then the equivalent OpenAI body)."""
        metadata = list(grpc_context.invocation_metadata())
        key = self.keys.check_grpc(metadata)
        _refuse_malformed(request)
        requested = next((str(v) for k, v in metadata if k.lower() == QOS_HEADER), None)
        return self._classed(self._prepare_grpc_body(request), self._qos_class(requested, key))

    def _prepare_grpc_body(self, request: pb.GenerateRequest) -> PreparedRequest:
        """The gRPC request as the equivalent OpenAI body, through the same checks as HTTP.
        Unset proto fields take Pavana's defaults: greedy, 16 new tokens."""
        check_grpc_message(request.ByteSize())
        s = request.sampling
        fields: dict[str, Any] = {
            "model": request.model or self.facts.name,
            "max_tokens": s.max_tokens if s.HasField("max_tokens") else GRPC_DEFAULT_MAX_TOKENS,
            "temperature": s.temperature if s.HasField("temperature") else 0.0,
            "top_p": s.top_p if s.HasField("top_p") else None,
            "top_k": s.top_k if s.HasField("top_k") else None,
            "seed": s.seed if s.HasField("seed") else None,
            "stop": list(s.stop) or None,
            "ignore_eos": s.ignore_eos,
        }
        kind = request.WhichOneof("input")
        if kind == "text":
            body = _validated(CompletionRequest, {**fields, "prompt": request.text})
            return self.prompts.completion(body, f"cmpl-{uuid.uuid4().hex}")
        if kind == "token_ids":
            body = _validated(CompletionRequest, {**fields, "prompt": list(request.token_ids.ids)})
            return self.prompts.completion(body, f"cmpl-{uuid.uuid4().hex}")
        if kind == "chat":
            messages = [{"role": m.role, "content": m.content} for m in request.chat.messages]
            body = _validated(ChatCompletionRequest, {**fields, "messages": messages})
            return self.prompts.chat(body, f"chatcmpl-{uuid.uuid4().hex}")
        raise invalid_request("input: set one of text, token_ids or chat", param="input")

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
