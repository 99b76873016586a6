"""The OpenAI API's request and response bodies, as far as Pavana serves them (pydantic v2).

Nothing a client sends is ignored silently. Every field of OpenAI's chat and completions
requests is declared here and either honoured or refused with a 400 naming it
(`router/prompt.py`, `router/sampling.py`); a field that is not declared is refused by
`extra="forbid"`, with OpenAI's error body and the field as `param` (`router/errors.py`).
A client that misspells `max_tokens` learns so at once instead of getting a default.

A few fields that clients and agent frameworks send by default and that ask for nothing
Pavana would do differently are accepted (`HARMLESS_FIELDS`); the README's API section lists
them with what each means here.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------

# Accepted although Pavana has nothing to do with them, because openai-python, LangChain,
# LlamaIndex or the Vercel AI SDK send them unasked: refusing them would break those clients
# for no gain. `store` and `service_tier` are accepted only with the values that ask for what
# Pavana does anyway (`router/prompt.py`).
HARMLESS_FIELDS = ("user", "store", "metadata", "service_tier")

# OpenAI request fields Pavana does not implement: refused like any unknown field, with a
# reason a person can act on (`router/errors.py` reads this).
UNSUPPORTED_FIELDS = {
    "audio": "audio output is not supported; Pavana generates text",
    "modalities": "output modalities are not supported; Pavana generates text",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "reasoning effort applies to reasoning models; the served model has no such setting",
    "verbosity": "verbosity is not supported",
    "functions": "the deprecated `functions` field is not supported; send `tools`",
    "function_call": "the deprecated `function_call` field is not supported; send `tool_choice`",
    "prompt_cache_key": "prompt cache keys are not supported; Pavana's prefix cache needs none",
    "safety_identifier": "safety identifiers are not supported; send `user` to have requests recorded with an id",
}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Request):
    # OpenAI's default: no usage chunk unless a client asks for it.
    include_usage: StrictBool = False


class _SamplingFields(_Request):
    """Fields completions and chat share. Ranges are checked in `router/sampling.py`, where the
    error can name the field the way OpenAI does (`param`)."""

    model: StrictStr
    temperature: float | None = None
    top_p: float | None = None
    top_k: StrictInt | None = None  # vLLM's extension; -1 or 0 disables it
    min_p: float | None = None  # vLLM's extension
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: list[StrictInt] | None = None  # vLLM's extension
    n: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None  # vLLM's extension
    min_tokens: StrictInt | None = None  # vLLM's extension
    # OpenAI's JSON keys are token ids written as strings.
    logit_bias: dict[StrictStr, float] | None = None
    user: StrictStr | None = None
    priority: StrictInt | None = None  # vLLM's extension, mapped onto QoS classes (router/priority.py)
    ignore_eos: StrictBool = False  # vLLM's extension, handy for benchmarks


class CompletionRequest(_SamplingFields):
    prompt: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    max_tokens: StrictInt | None = 16
    echo: StrictBool = False
    logprobs: StrictInt | None = None  # completions: how many alternatives per token
    best_of: StrictInt | None = None
    suffix: StrictStr | None = None


class ImageURL(_Request):
    url: StrictStr
    detail: StrictStr | None = None


class TextPart(_Request):
    type: Literal["text"]
    text: StrictStr


class ImagePart(_Request):
    type: Literal["image_url"]
    # Some clients send the URL as a bare string.
    image_url: ImageURL | StrictStr


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCallIn(_Request):
    name: StrictStr
    arguments: StrictStr  # JSON text, as OpenAI returns it


class ToolCallIn(_Request):
    """A call an earlier assistant turn made, sent back in the history."""

    id: StrictStr
    type: Literal["function"]
    function: FunctionCallIn


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCallIn] | None = None  # assistant messages
    tool_call_id: StrictStr | None = None  # tool messages: the call they answer
    # An assistant message as Pavana (or OpenAI) returned it, sent back as it is.
    refusal: StrictStr | None = None


class FunctionDefinition(_Request):
    name: StrictStr
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema; checked in router/tools.py
    strict: StrictBool | None = None


class ToolDefinition(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    name: StrictStr


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Request):
    name: StrictStr
    description: StrictStr | None = None
    # `schema` would shadow a BaseModel attribute; the client's key is `schema`.
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool | None = None  # chat: whether to return them
    top_logprobs: StrictInt | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: ResponseFormat | None = None
    # Harmless fields (HARMLESS_FIELDS), checked in router/prompt.py.
    store: StrictBool | None = None
    metadata: dict[StrictStr, StrictStr] | None = None
    service_tier: StrictStr | None = None


class TokenizeRequest(_Request):
    """vLLM's `/tokenize`: a prompt, or chat messages rendered as `/v1/chat/completions` would."""

    model: StrictStr | None = None
    prompt: StrictStr | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: StrictBool | None = None  # prompt: default true; messages: rendered as chat does
    add_generation_prompt: StrictBool = True
    tools: list[ToolDefinition] | None = None
    return_token_strs: StrictBool = False


class DetokenizeRequest(_Request):
    model: StrictStr | None = None
    tokens: list[StrictInt]


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> UsageInfo:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens)


class CompletionLogprobs(BaseModel):
    """The completions API's (legacy) logprobs: parallel lists, one entry per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class CompletionStreamResponse(CompletionResponse):
    """OpenAI's completion chunks use the same object name as the whole response."""


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobInfo(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobInfo] | None = None
    refusal: None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """OpenAI's streamed call: the first delta of a call has its id, type and name; the
    arguments follow in pieces that concatenate to the JSON text."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "pavana"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorBody(BaseModel):
    """OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorInfo
