"""The OpenAI response bodies and stream chunks of one request, built from token chunks.

A format knows one endpoint's shapes (`/v1/completions` or `/v1/chat/completions`); the HTTP
routes (`router/ingress.py`) collect or stream a generation through it. Server-sent events are
written here too, so that every chunk of every endpoint is framed the same way.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel

from router.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatResponseMessage,
    CompletionChoice,
    CompletionResponse,
    CompletionStreamResponse,
    DeltaMessage,
    UsageInfo,
)
from workers.requests import TokenChunk

SSE_DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel | dict[str, Any]) -> str:
    data = payload.model_dump_json(exclude_none=False) if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


SSE_DONE = "data: [DONE]\n\n"


class Collected:
    """A finished generation, gathered from its token chunks."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None

    def add(self, chunk: TokenChunk) -> None:
        self.text.append(chunk.text)
        self.token_ids.extend(chunk.token_ids)
        if chunk.finished:
            self.finish_reason = chunk.finish_reason



class CompletionFormat:
    """`/v1/completions` bodies and chunks for one request."""

    def __init__(self, request_id: str, model: str, num_prompt_tokens: int) -> None:
        self.request_id = request_id
        self.model = model
        self.num_prompt_tokens = num_prompt_tokens
        self.created = int(time.time())

    def response(self, collected: Collected) -> CompletionResponse:
        return CompletionResponse(
            id=self.request_id,
            created=self.created,
            model=self.model,
            choices=[CompletionChoice(text="".join(collected.text), finish_reason=collected.finish_reason)],
            usage=UsageInfo.of(self.num_prompt_tokens, len(collected.token_ids)),
        )

    def start(self) -> list[BaseModel]:
        return []

    def chunk(self, chunk: TokenChunk) -> list[BaseModel]:
        finish = chunk.finish_reason if chunk.finished else None
        if not chunk.text and finish is None:  # a token whose text is held back: nothing to say yet
            return []
        choice = CompletionChoice(text=chunk.text, finish_reason=finish)
        return [CompletionStreamResponse(id=self.request_id, created=self.created, model=self.model, choices=[choice])]

    def usage_chunk(self, num_output_tokens: int) -> BaseModel:
        return CompletionStreamResponse(
            id=self.request_id, created=self.created, model=self.model, choices=[],
            usage=UsageInfo.of(self.num_prompt_tokens, num_output_tokens),
        )


class ChatFormat(CompletionFormat):
    """`/v1/chat/completions` bodies and chunks: the role first, then content deltas."""

    def response(self, collected: Collected) -> ChatCompletionResponse:  # type: ignore[override]
        return ChatCompletionResponse(
            id=self.request_id,
            created=self.created,
            model=self.model,
            choices=[ChatChoice(message=ChatResponseMessage(content="".join(collected.text)), finish_reason=collected.finish_reason)],
            usage=UsageInfo.of(self.num_prompt_tokens, len(collected.token_ids)),
        )

    def _chunk(self, delta: DeltaMessage, finish: str | None = None) -> ChatCompletionChunk:
        choice = ChatChunkChoice(delta=delta, finish_reason=finish)
        return ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model, choices=[choice])

    def start(self) -> list[BaseModel]:
        return [self._chunk(DeltaMessage(role="assistant", content=""))]

    def chunk(self, chunk: TokenChunk) -> list[BaseModel]:
        finish = chunk.finish_reason if chunk.finished else None
        if not chunk.text and finish is None:
            return []
        return [self._chunk(DeltaMessage(content=chunk.text or None), finish)]

    def usage_chunk(self, num_output_tokens: int) -> BaseModel:
        return ChatCompletionChunk(
            id=self.request_id, created=self.created, model=self.model, choices=[],
            usage=UsageInfo.of(self.num_prompt_tokens, num_output_tokens),
        )
