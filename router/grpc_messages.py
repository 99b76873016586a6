"""Between `pavana.proto`'s messages and the OpenAI shapes the pipeline speaks.

A `GenerateRequest` becomes the OpenAI body HTTP would have received (`openai_body`), so one
set of checks, defaults and error messages serves both protocols: a field unset in the proto is
left out of the body and takes OpenAI's default, exactly as a field left out of a JSON body
(temperature 1.0; max_tokens as many as the context allows for a chat, 16 for a completion).
What the proto can say and JSON cannot is checked here: fields this server does not know
(a newer client's, or bytes of the wrong wire type), JSON carried as text (schemas, tool
parameters), and images sent as raw bytes, which become data URLs.

Answers go the other way (`Answer`): the generation's chunks through the HTTP format of the
endpoint (`router/formats.py`), then into `GenerateResponse`s.

No Ray here: the ingress calls this, and so do unit tests.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from router.errors import invalid_request
from router.formats import CompletionFormat
from router.logprobs import LOGPROB_FLOOR, TokenTexts
from router.proto import pavana_pb2 as pb
from router.protocol import ChatChoice, ChatChunkChoice, ToolCallDelta
from workers.requests import TokenChunk, TokenLogprob

# Proto fields of `SamplingParams` with presence that carry over to the body under their name.
_OPTIONAL_SAMPLING = (
    "max_tokens", "temperature", "top_p", "top_k", "seed", "n", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "min_p", "min_tokens",
)  # fmt: skip
_WIRE_TYPES = {0: "a varint", 1: "a 64-bit value", 2: "length-delimited bytes", 3: "a group", 4: "a group end", 5: "a 32-bit value"}
_TYPE_NAMES = {
    FieldDescriptor.TYPE_STRING: "a string", FieldDescriptor.TYPE_BYTES: "bytes", FieldDescriptor.TYPE_BOOL: "a bool",
    FieldDescriptor.TYPE_INT32: "an int32", FieldDescriptor.TYPE_INT64: "an int64", FieldDescriptor.TYPE_FLOAT: "a float",
    FieldDescriptor.TYPE_DOUBLE: "a double", FieldDescriptor.TYPE_ENUM: "an enum",
}  # fmt: skip
# An image sent as bytes without a media type: the decoder reads the format from the bytes.
UNNAMED_IMAGE_TYPE = "image/*"

COMPLETION = "completion"
CHAT = "chat"


# -- requests -----------------------------------------------------------------------------------
def refuse_unknown_fields(message: Message, path: str = "") -> None:
    """Refuse what the parser kept aside: a field number this server's proto lacks (a client
    built from a newer `pavana.proto`) or a known field sent with the wrong wire type. HTTP
    refuses unknown JSON fields with a 400 naming them; dropping either here would be silent."""
    for unknown in UnknownFieldSet(message):
        known = message.DESCRIPTOR.fields_by_number.get(unknown.field_number)
        sent = _WIRE_TYPES.get(unknown.wire_type, f"wire type {unknown.wire_type}")
        if known is not None:
            where = _join(path, known.name)
            raise invalid_request(f"{where}: sent as {sent}, but the field is {_type_name(known)}", param=where)
        where = _join(path, f"#{unknown.field_number}")
        raise invalid_request(
            f"{where}: {message.DESCRIPTOR.full_name} has no field number {unknown.field_number} (sent as {sent}); "
            "the client's pavana.proto is not this server's",
            param=where,
        )
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE or (field.message_type.GetOptions().map_entry):
            continue
        if field.is_repeated:
            for i, item in enumerate(value):
                refuse_unknown_fields(item, f"{_join(path, field.name)}[{i}]")
        else:
            refuse_unknown_fields(value, _join(path, field.name))


def _type_name(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return f"a {field.message_type.full_name} message"
    name = _TYPE_NAMES.get(field.type, "a scalar")
    return f"a list of {name.split(' ', 1)[-1]} values" if field.is_repeated else name


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def openai_body(request: pb.GenerateRequest, served_model: str) -> tuple[str, dict[str, Any]]:
    """The endpoint (`COMPLETION` or `CHAT`) and the OpenAI body equivalent to `request`."""
    refuse_unknown_fields(request)
    body: dict[str, Any] = {"model": request.model or served_model}
    body |= _sampling_fields(request.sampling)
    kind = request.WhichOneof("input")
    if kind == "text":
        body["prompt"] = request.text
    elif kind == "token_ids":
        body["prompt"] = list(request.token_ids.ids)
    elif kind == "chat":
        body["messages"] = [_message(m, f"messages[{i}]") for i, m in enumerate(request.chat.messages)]
    else:
        raise invalid_request("input: set one of text, token_ids or chat", param="input")
    endpoint = CHAT if kind == "chat" else COMPLETION
    body |= _logprobs_fields(request.sampling, endpoint)
    if request.echo:
        body["echo"] = True
    if request.HasField("response_format"):
        body["response_format"] = _response_format(request.response_format)
    if request.tools:
        body["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(request.tools)]
    if request.HasField("tool_choice"):
        body["tool_choice"] = _tool_choice(request.tool_choice)
    if request.HasField("parallel_tool_calls"):
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.HasField("priority"):
        body["priority"] = request.priority
    if request.user:
        body["user"] = request.user
    return endpoint, body


def _decimal(value: Any) -> Any:
    """A proto `float` as the decimal a client wrote: 0.7 arrives as 0.699999988 in float32,
    and a seeded draw at that temperature could differ from HTTP's at 0.7 (a double). Seven
    significant digits are what float32 holds."""
    return float(f"{value:.7g}") if isinstance(value, float) else value


def _sampling_fields(s: pb.SamplingParams) -> dict[str, Any]:
    fields = {name: _decimal(getattr(s, name)) for name in _OPTIONAL_SAMPLING if s.HasField(name)}
    if s.stop:
        fields["stop"] = list(s.stop)
    if s.ignore_eos:
        fields["ignore_eos"] = True
    if s.stop_token_ids:
        fields["stop_token_ids"] = list(s.stop_token_ids)
    if s.logit_bias:
        # JSON object keys are strings; the body reads exactly as an HTTP client's would.
        fields["logit_bias"] = {str(token): _decimal(bias) for token, bias in sorted(s.logit_bias.items())}
    return fields


def _logprobs_fields(s: pb.SamplingParams, endpoint: str) -> dict[str, Any]:
    """Chat takes `logprobs: true` and `top_logprobs: k`; completions take `logprobs: k` alone
    (OpenAI's two shapes of one idea), so one pair of proto fields maps onto either."""
    if s.HasField("top_logprobs") and not s.logprobs:
        raise invalid_request("top_logprobs: set logprobs too; alternatives come with the sampled tokens' log probabilities", param="top_logprobs")
    if not s.logprobs:
        return {}
    if endpoint == CHAT:
        return {"logprobs": True} | ({"top_logprobs": s.top_logprobs} if s.HasField("top_logprobs") else {})
    return {"logprobs": s.top_logprobs if s.HasField("top_logprobs") else 0}


def _message(m: pb.ChatMessage, where: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": m.role}
    if m.parts and m.HasField("content"):
        raise invalid_request(f"{where}.content: set content or parts, not both", param=f"{where}.content")
    if m.parts:
        entry["content"] = [_part(p, f"{where}.content[{j}]") for j, p in enumerate(m.parts)]
    elif m.HasField("content"):
        entry["content"] = m.content
    elif not m.tool_calls:
        # A client built before `content` had presence sends no field for "": the same text.
        entry["content"] = ""
    if m.name:
        entry["name"] = m.name
    if m.tool_calls:
        entry["tool_calls"] = [_tool_call(c) for c in m.tool_calls]
    if m.tool_call_id:
        entry["tool_call_id"] = m.tool_call_id
    return entry


def _part(part: pb.ContentPart, where: str) -> dict[str, Any]:
    kind = part.WhichOneof("part")
    if kind == "text":
        return {"type": "text", "text": part.text}
    if kind == "image":
        url: dict[str, Any] = {"url": _image_url(part.image, f"{where}.image_url")}
        if part.image.detail:
            url["detail"] = part.image.detail
        return {"type": "image_url", "image_url": url}
    raise invalid_request(f"{where}: set text or image", param=where)


def _image_url(image: pb.Image, where: str) -> str:
    source = image.WhichOneof("source")
    if source == "url":
        return image.url
    if source == "data":
        if not image.data:
            raise invalid_request(f"{where}: the image has no bytes", param=where)
        mime = image.mime_type or UNNAMED_IMAGE_TYPE
        # One base64 round trip (the pipeline decodes data URLs) buys one path for every
        # image, whichever protocol it came by: same size limits, same checks, same errors.
        return f"data:{mime};base64,{base64.b64encode(image.data).decode('ascii')}"
    raise invalid_request(f"{where}: set url or data", param=where)


def _tool_call(call: pb.ToolCall) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": call.id, "type": call.type or "function"}
    if call.HasField("function"):
        entry["function"] = {"name": call.function.name, "arguments": call.function.arguments}
    return entry


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise invalid_request(f"{where}: not valid JSON ({exc})", param=where) from None


def _response_format(rf: pb.ResponseFormat) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": rf.type}
    if rf.HasField("json_schema"):
        js = rf.json_schema
        schema: dict[str, Any] = {}
        if js.name:
            schema["name"] = js.name
        if js.description:
            schema["description"] = js.description
        if js.schema:
            schema["schema"] = _json(js.schema, "response_format.json_schema.schema")
        if js.HasField("strict"):
            schema["strict"] = js.strict
        entry["json_schema"] = schema
    return entry


def _tool(tool: pb.Tool, where: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": tool.type or "function"}
    if tool.HasField("function"):
        f = tool.function
        function: dict[str, Any] = {"name": f.name}
        if f.description:
            function["description"] = f.description
        if f.parameters:
            function["parameters"] = _json(f.parameters, f"{where}.function.parameters")
        if f.HasField("strict"):
            function["strict"] = f.strict
        entry["function"] = function
    return entry


def _tool_choice(choice: pb.ToolChoice) -> Any:
    kind = choice.WhichOneof("choice")
    if kind == "mode":
        return choice.mode
    if kind == "function_name":
        return {"type": "function", "function": {"name": choice.function_name}}
    raise invalid_request("tool_choice: set mode or function_name", param="tool_choice")


# -- responses ----------------------------------------------------------------------------------
def usage(num_prompt_tokens: int, num_output_tokens: int) -> pb.Usage:
    return pb.Usage(prompt_tokens=num_prompt_tokens, completion_tokens=num_output_tokens, total_tokens=num_prompt_tokens + num_output_tokens)


def token_logprobs(entries: Sequence[TokenLogprob | None], texts: TokenTexts, token_ids: Sequence[int] | None = None) -> list[pb.TokenLogprob]:
    """The engine's logprobs with each token's text and bytes, as HTTP reports them
    (`router/logprobs.py`: the same strings, and the same floor for a ruled-out token). An
    entry of None (a prompt's first token) names its token through `token_ids`."""
    out = []
    for i, entry in enumerate(entries):
        if entry is None:
            token_id = token_ids[i] if token_ids is not None else 0
            out.append(pb.TokenLogprob(token_id=token_id, token=texts.token_str(token_id), bytes=texts.token_bytes(token_id)))
            continue
        top = [
            pb.TopLogprob(token_id=tid, token=texts.token_str(tid), logprob=max(lp, LOGPROB_FLOOR), bytes=texts.token_bytes(tid)) for tid, lp in entry.top
        ]
        out.append(
            pb.TokenLogprob(
                token_id=entry.token_id, token=texts.token_str(entry.token_id), logprob=max(entry.logprob, LOGPROB_FLOOR),
                bytes=texts.token_bytes(entry.token_id), top_logprobs=top,
            )
        )  # fmt: skip
    return out


class Answer:
    """One request's gRPC answer, unary or streamed, built on its endpoint's HTTP format
    (`router/formats.py`): the text (with `echo`), the tool calls read from the output and the
    finish reasons come from the same per-choice code as over HTTP, and only their shape
    differs here. gRPC adds what JSON leaves out: token ids, and token ids in the logprobs."""

    def __init__(self, fmt: CompletionFormat, prepared: Any) -> None:
        self.fmt = fmt
        self.n = fmt.n
        self.request_id = fmt.request_id
        self.prompt_token_ids = list(prepared.request.prompt_token_ids)
        self.echo_logprobs = fmt.logprobs and fmt.echo is not None
        self._prompt_logprobs: tuple[TokenLogprob | None, ...] = ()
        self._started: set[int] = set()
        self._finished = 0

    # -- unary ----------------------------------------------------------------------------------
    def add(self, index: int, chunk: TokenChunk) -> None:
        self.fmt.add(index, chunk)
        if chunk.prompt_logprobs:
            self._prompt_logprobs = chunk.prompt_logprobs

    def response(self) -> pb.GenerateResponse:
        whole = self.fmt.response()
        choices = []
        for choice, collected in zip(whole.choices, self.fmt.collected):
            out = pb.Choice(index=choice.index, token_ids=collected.token_ids, finish_reason=choice.finish_reason or "")
            if isinstance(choice, ChatChoice):
                out.text = choice.message.content or ""
                out.tool_calls.extend(
                    pb.ToolCall(id=c.id, type=c.type, function=pb.FunctionCall(name=c.function.name, arguments=c.function.arguments), index=j)
                    for j, c in enumerate(choice.message.tool_calls or [])
                )
            else:
                out.text = choice.text
            self._add_logprobs(out, collected.logprobs, first=True)
            choices.append(out)
        response = pb.GenerateResponse(id=self.request_id, model=self.fmt.model, choices=choices, usage=self._usage())
        return self._with_top_level(response)

    # -- a stream -------------------------------------------------------------------------------
    def message(self, index: int, chunk: TokenChunk) -> pb.GenerateResponse:
        """The stream message of one chunk of choice `index`: its new text (content and call
        pieces, as HTTP's chunks of the same chunk say) and ids; the message that ends the last
        choice carries the usage."""
        if chunk.prompt_logprobs:
            self._prompt_logprobs = chunk.prompt_logprobs
        events = self.fmt.chunk(index, chunk)
        out = pb.Choice(index=index, token_ids=chunk.token_ids)
        for event in events:
            for c in event.choices:
                if isinstance(c, ChatChunkChoice):
                    out.text += c.delta.content or ""
                    out.tool_calls.extend(_call_piece(d) for d in c.delta.tool_calls or [])
                else:
                    out.text += c.text
                if c.finish_reason:
                    out.finish_reason = c.finish_reason
        self._add_logprobs(out, chunk.logprobs, first=index not in self._started)
        self._started.add(index)
        response = pb.GenerateResponse(id=self.request_id, model=self.fmt.model, choices=[out])
        if chunk.finished:
            self._finished += 1
            if self._finished == self.n:
                response.usage.CopyFrom(self._usage())
        return self._with_top_level(response)

    # -- pieces ---------------------------------------------------------------------------------
    def _usage(self) -> pb.Usage:
        return usage(self.fmt.num_prompt_tokens, self.fmt.output_tokens)

    def _add_logprobs(self, out: pb.Choice, entries: Sequence[TokenLogprob], *, first: bool) -> None:
        texts = self.fmt.texts
        if not self.fmt.logprobs or texts is None:
            return
        out.logprobs.extend(token_logprobs(entries, texts))
        if first and self.echo_logprobs and self._prompt_logprobs:
            out.prompt_logprobs.extend(token_logprobs(self._prompt_logprobs, texts, self.prompt_token_ids))

    def _with_top_level(self, response: pb.GenerateResponse) -> pb.GenerateResponse:
        """Copy choice 0 to the top-level fields when there is one choice (clients written
        before `choices` read those)."""
        if self.n == 1 and len(response.choices) == 1:
            only = response.choices[0]
            response.text = only.text
            response.token_ids.extend(only.token_ids)
            response.finish_reason = only.finish_reason
        return response


def _call_piece(delta: ToolCallDelta) -> pb.ToolCall:
    return pb.ToolCall(
        index=delta.index, id=delta.id or "", type=delta.type or "",
        function=pb.FunctionCall(name=delta.function.name or "", arguments=delta.function.arguments or ""),
    )  # fmt: skip
