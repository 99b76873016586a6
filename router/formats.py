"""The OpenAI response bodies and stream chunks of one request, built from token chunks.

A format knows one endpoint's shapes (`/v1/completions` or `/v1/chat/completions`) and keeps
each choice's state while its chunks arrive: the text, the tokens, the logprobs, and in chat
with tools the calls read from the output (`router/tools.py`). The HTTP routes
(`router/ingress.py`) collect or stream a generation through it, chunk by chunk as
`(choice index, TokenChunk)` pairs from `Ingress.generate_choices`. Server-sent events are
written here too, so that every chunk of every endpoint is framed the same way.

A collected response and a streamed one are built by the same per-choice code, so the text,
calls and logprobs of the two agree.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel

from router.logprobs import CompletionLogprobWriter, TokenTexts, chat_logprobs, merge_completion_logprobs
from router.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatResponseMessage,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    CompletionStreamResponse,
    DeltaMessage,
    FunctionCall,
    FunctionCallDelta,
    ToolCall,
    ToolCallDelta,
    UsageInfo,
)
from router.tools import CallDelta, Delta, ToolCallParser, ToolPlan
from workers.requests import TokenChunk, TokenLogprob

SSE_DONE = "data: [DONE]\n\n"


def sse(payload: BaseModel | dict[str, Any]) -> str:
    data = payload.model_dump_json(exclude_none=False) if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


class Collected:
    """A finished generation of one choice, gathered from its token chunks."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self.logprobs: list[TokenLogprob] = []
        self.prompt_logprobs: tuple[TokenLogprob | None, ...] = ()

    def add(self, chunk: TokenChunk) -> None:
        self.text.append(chunk.text)
        self.token_ids.extend(chunk.token_ids)
        self.logprobs.extend(chunk.logprobs)
        if chunk.prompt_logprobs:
            self.prompt_logprobs = chunk.prompt_logprobs
        if chunk.finished:
            self.finish_reason = chunk.finish_reason


def tool_finish_reason(finish_reason: str | None, parser: ToolCallParser | None) -> str | None:
    """OpenAI's `tool_calls` when the output ended of itself with calls in it; `length` stays."""
    if parser is not None and parser.calls and finish_reason == "stop":
        return "tool_calls"
    return finish_reason


class CompletionFormat:
    """`/v1/completions` bodies and chunks for one request of `n` choices.

    `echo` is sent before each choice's text, and with `logprobs` the prompt's logprobs
    (`prompt_token_ids`, reported by the engine on copy 0's first chunk) before its tokens'.
    """

    def __init__(
        self,
        request_id: str,
        model: str,
        num_prompt_tokens: int,
        *,
        n: int = 1,
        texts: TokenTexts | None = None,
        logprobs: bool = False,
        echo: str | None = None,
        prompt_token_ids: tuple[int, ...] | list[int] = (),
    ) -> None:
        if logprobs and texts is None:
            raise ValueError("logprobs: a format that reports logprobs needs the tokenizer's TokenTexts")
        self.request_id = request_id
        self.model = model
        self.num_prompt_tokens = num_prompt_tokens
        self.n = n
        self.texts = texts
        self.logprobs = logprobs
        self.echo = echo
        self.prompt_token_ids = list(prompt_token_ids)
        self.created = int(time.time())
        self.collected = [Collected() for _ in range(n)]
        self._started = [False] * n
        self._prompt_logprobs: tuple[TokenLogprob | None, ...] = ()
        self._writers = [CompletionLogprobWriter(texts) for _ in range(n)] if logprobs and texts else []

    @property
    def output_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.collected)

    def usage(self) -> UsageInfo:
        return UsageInfo.of(self.num_prompt_tokens, self.output_tokens)

    def add(self, index: int, chunk: TokenChunk) -> None:
        """Gather a chunk (both ways of answering count tokens through here)."""
        self.collected[index].add(chunk)
        if chunk.prompt_logprobs:
            self._prompt_logprobs = chunk.prompt_logprobs

    # -- a whole response -----------------------------------------------------------------------
    def response(self) -> BaseModel:
        choices = []
        for index, collected in enumerate(self.collected):
            parts = self._choice_logprobs(index, collected.logprobs, first=True)
            text = (self.echo or "") + "".join(collected.text)
            choices.append(CompletionChoice(index=index, text=text, logprobs=parts, finish_reason=collected.finish_reason))
        return CompletionResponse(id=self.request_id, created=self.created, model=self.model, choices=choices, usage=self.usage())

    # -- a stream -------------------------------------------------------------------------------
    def start(self) -> list[BaseModel]:
        return []

    def chunk(self, index: int, chunk: TokenChunk) -> list[BaseModel]:
        self.add(index, chunk)
        first = not self._started[index]
        self._started[index] = True
        text = (self.echo or "") + chunk.text if first else chunk.text
        finish = chunk.finish_reason if chunk.finished else None
        logprobs = self._choice_logprobs(index, chunk.logprobs, first=first)
        if not text and finish is None and not (logprobs and logprobs.tokens):  # a token whose text is held back
            return []
        choice = CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish)
        return [CompletionStreamResponse(id=self.request_id, created=self.created, model=self.model, choices=[choice])]

    def usage_chunk(self) -> BaseModel:
        return CompletionStreamResponse(id=self.request_id, created=self.created, model=self.model, choices=[], usage=self.usage())

    def _choice_logprobs(self, index: int, entries: list[TokenLogprob] | tuple[TokenLogprob, ...], *, first: bool) -> CompletionLogprobs | None:
        if not self._writers:
            return None
        writer = self._writers[index]
        parts = []
        if first and self.echo is not None and self._prompt_logprobs:
            parts.append(writer.write(self._prompt_logprobs, self.prompt_token_ids))
        parts.append(writer.write(entries))
        return merge_completion_logprobs(parts)


class ChatFormat(CompletionFormat):
    """`/v1/chat/completions` bodies and chunks: the role first, then content and tool-call
    deltas, each choice with its own `index`."""

    def __init__(self, request_id: str, model: str, num_prompt_tokens: int, *, tools: ToolPlan | None = None, **kwargs: Any) -> None:
        super().__init__(request_id, model, num_prompt_tokens, **kwargs)
        self.tools = tools
        self._parsers = [ToolCallParser(tools) if tools else None for _ in range(self.n)]

    # -- a whole response -----------------------------------------------------------------------
    def response(self) -> BaseModel:
        choices = []
        for index, collected in enumerate(self.collected):
            parser = ToolCallParser(self.tools) if self.tools else None
            text = "".join(collected.text)
            content: str | None = text
            calls: list[ToolCall] | None = None
            if parser is not None:
                deltas = parser.feed(text) + parser.finish()
                content = "".join(d for d in deltas if isinstance(d, str)) or None
                calls = [ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in parser.calls] or None
            logprobs = ChoiceLogprobs(content=chat_logprobs(collected.logprobs, self.texts)) if self.logprobs and self.texts else None
            choices.append(
                ChatChoice(
                    index=index,
                    message=ChatResponseMessage(content=content, tool_calls=calls),
                    logprobs=logprobs,
                    finish_reason=tool_finish_reason(collected.finish_reason, parser),
                )
            )
        return ChatCompletionResponse(id=self.request_id, created=self.created, model=self.model, choices=choices, usage=self.usage())

    # -- a stream -------------------------------------------------------------------------------
    def _chunk(self, index: int, delta: DeltaMessage, finish: str | None = None, logprobs: ChoiceLogprobs | None = None) -> ChatCompletionChunk:
        choice = ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish)
        return ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model, choices=[choice])

    def start(self) -> list[BaseModel]:
        return [self._chunk(index, DeltaMessage(role="assistant", content="")) for index in range(self.n)]

    def chunk(self, index: int, chunk: TokenChunk) -> list[BaseModel]:
        self.add(index, chunk)
        parser = self._parsers[index]
        deltas: list[Delta] = [chunk.text] if parser is None else parser.feed(chunk.text)
        if chunk.finished and parser is not None:
            deltas += parser.finish()
        out = [self._chunk(index, delta) for delta in _grouped(deltas)]
        if self.logprobs and self.texts and chunk.logprobs:
            logprobs = ChoiceLogprobs(content=chat_logprobs(chunk.logprobs, self.texts))
            if out:
                out[0].choices[0].logprobs = logprobs
            else:
                out.append(self._chunk(index, DeltaMessage(), logprobs=logprobs))
        if chunk.finished:
            finish = tool_finish_reason(chunk.finish_reason, parser)
            if out:
                out[-1].choices[0].finish_reason = finish
            else:
                out.append(self._chunk(index, DeltaMessage(), finish))
        return out

    def usage_chunk(self) -> BaseModel:
        return ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model, choices=[], usage=self.usage())


def _grouped(deltas: list[Delta]) -> list[DeltaMessage]:
    """Content pieces in a row become one delta; each piece of a call is a delta of its own,
    as OpenAI streams them."""
    out: list[DeltaMessage] = []
    text = ""
    for delta in deltas:
        if isinstance(delta, str):
            text += delta
            continue
        if text:
            out.append(DeltaMessage(content=text))
            text = ""
        out.append(DeltaMessage(tool_calls=[_call_delta(delta)]))
    if text:
        out.append(DeltaMessage(content=text))
    return out


def _call_delta(delta: CallDelta) -> ToolCallDelta:
    return ToolCallDelta(
        index=delta.index,
        id=delta.id,
        type="function" if delta.id is not None else None,
        function=FunctionCallDelta(name=delta.name, arguments=delta.arguments),
    )


def format_for(kind: type[CompletionFormat], prepared: Any, model: str, texts: TokenTexts) -> CompletionFormat:
    """The format of one prepared request (`router.prompt.PreparedRequest`)."""
    request = prepared.request
    kwargs: dict[str, Any] = dict(n=prepared.n, texts=texts, logprobs=request.params.logprobs is not None)
    if issubclass(kind, ChatFormat):
        kwargs["tools"] = prepared.tools
    else:
        kwargs.update(echo=prepared.echo, prompt_token_ids=request.prompt_token_ids)
    return kind(request.request_id, model, request.num_prompt_tokens, **kwargs)
