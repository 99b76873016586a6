"""Tool calling in one documented format, for models whose chat template has none.

The format is Hermes's (also Qwen 2.5's), which many open models were trained on:

- The functions go into the system prompt (appended to the first system or developer
  message, or as a new system message before the conversation): an instruction, then one
  JSON object per function inside `<tools></tools>`.
- A call is a JSON object inside tags, one block per call:
  `<tool_call>\\n{"name": "get_weather", "arguments": {"city": "Paris"}}\\n</tool_call>`.
- In the history, an assistant message's `tool_calls` are written back in that form after its
  text, and the results (`tool` messages) become a user turn of `<tool_response>` blocks,
  `{"name": ..., "content": ...}` each: a user turn, because chat templates know the roles
  system, user and assistant, and some refuse any other.

`tool_choice` decides how the output is read:
- `none`: the functions are not shown and the output is plain content;
- `auto` (the default with tools): the model may write calls; `ToolCallParser` takes every
  well-formed block naming a known function as a call and everything else as content;
- `required` or a named function: the output is constrained by a grammar (`call_grammar`,
  llguidance Lark embedding each function's parameter schema with `%json`), so it is one or
  more calls that always parse. With `parallel_tool_calls: false` it is exactly one call; in
  `auto`, the output stops at the end of the first call.

Pure: messages and text in, messages, grammars and deltas out; no Ray, no tokenizer.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from router.errors import invalid_request
from router.protocol import ChatMessage, NamedToolChoice, TextPart, ToolDefinition
from router.response_format import NAME_PATTERN, check_grammar, json_schema_grammar, lark_json

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
MAX_TOOLS = 128  # OpenAI's limit
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    description: str | None
    parameters: dict[str, Any]

    def shown(self) -> dict[str, Any]:
        """As the system prompt lists it (OpenAI's own tool shape)."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description:
            fn["description"] = self.description
        fn["parameters"] = self.parameters
        return {"type": "function", "function": fn}

    def call_schema(self) -> dict[str, Any]:
        """The JSON schema of one call of this function, name first (llguidance writes
        properties in the schema's order, so a streamed call names its function at once)."""
        return {
            "type": "object",
            "properties": {"name": {"const": self.name}, "arguments": self.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How one request's output is read for calls."""

    names: frozenset[str]
    forced: bool  # a grammar makes the output calls only (`required`, a named function)
    parallel: bool  # more than one call allowed


@dataclass(frozen=True, slots=True)
class ToolSetup:
    """What a chat request's `tools`, `tool_choice` and `parallel_tool_calls` add to it."""

    functions: tuple[Function, ...] = ()  # shown in the system prompt (none with `tool_choice: none`)
    plan: ToolPlan | None = None  # None: the output is content only
    grammar: str | None = None
    stop: tuple[str, ...] = ()  # Pavana's own stop strings (the end of a call, with one call allowed)


NO_TOOLS = ToolSetup()


# -- the request's tools ----------------------------------------------------------------------------
def check_functions(tools: Sequence[ToolDefinition] | None) -> tuple[Function, ...]:
    """The functions of `tools`, each name and parameter schema checked with the field named."""
    tools = tools or []
    if len(tools) > MAX_TOOLS:
        raise invalid_request(f"tools: at most {MAX_TOOLS} tools, got {len(tools)}", param="tools")
    functions: list[Function] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}].function"
        name = tool.function.name
        if not NAME_PATTERN.match(name):
            raise invalid_request(f"{where}.name: must be 1 to 64 letters, digits, '_' or '-', got {name!r:.80}", param=f"{where}.name")
        if name in seen:
            raise invalid_request(f"{where}.name: {name!r} names two tools", param=f"{where}.name")
        seen.add(name)
        parameters = tool.function.parameters if tool.function.parameters is not None else EMPTY_PARAMETERS
        if parameters.get("type", "object") != "object":
            raise invalid_request(
                f"{where}.parameters: must be a JSON schema of type 'object' (a call's arguments are an object), "
                f"got type {parameters.get('type')!r:.40}",
                param=f"{where}.parameters",
            )
        function = Function(name, tool.function.description, parameters)
        json_schema_grammar(function.call_schema(), f"{where}.parameters")
        functions.append(function)
    return tuple(functions)


def prepare_tools(
    tools: Sequence[ToolDefinition] | None,
    tool_choice: str | NamedToolChoice | None,
    parallel_tool_calls: bool | None,
) -> ToolSetup:
    functions = check_functions(tools)
    if not functions:
        if tool_choice not in (None, "none"):
            raise invalid_request("tool_choice: only allowed when tools are given", param="tool_choice")
        return NO_TOOLS
    choice = tool_choice or "auto"
    parallel = parallel_tool_calls is not False
    if choice == "none":
        return NO_TOOLS
    if choice == "auto":
        names = frozenset(f.name for f in functions)
        # With one call allowed, generation ends where the first call does (the parser reads
        # a call that the stop string cut off before its closing tag).
        return ToolSetup(functions, ToolPlan(names, forced=False, parallel=parallel), stop=() if parallel else (TOOL_CALL_CLOSE,))
    if isinstance(choice, NamedToolChoice):
        forced = [f for f in functions if f.name == choice.function.name]
        if not forced:
            raise invalid_request(
                f"tool_choice: names the function {choice.function.name!r:.80}, which is not one of the tools", param="tool_choice"
            )
    else:  # "required"
        forced = list(functions)
    grammar = call_grammar(forced, parallel)
    return ToolSetup(functions, ToolPlan(frozenset(f.name for f in forced), forced=True, parallel=parallel), grammar=grammar)


def call_grammar(functions: Sequence[Function], parallel: bool) -> str:
    """An llguidance Lark grammar whose sentences are one call block (or several, one per line,
    with `parallel`) of one of `functions`, in Pavana's format."""
    from llguidance import LLMatcher

    schemas = [f.call_schema() for f in functions]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    start = 'start: call ("\\n" call)*' if parallel else "start: call"
    lark = "\n".join([start, f'call: "{TOOL_CALL_OPEN}\\n" body "\\n{TOOL_CALL_CLOSE}"', f"body: {lark_json(schema)}"])
    grammar = LLMatcher.grammar_from_lark(lark)
    check_grammar(grammar, "tools")
    return grammar


# -- the prompt -----------------------------------------------------------------------------------------
def tools_prompt(functions: Sequence[Function], parallel: bool) -> str:
    how_many = "one or more functions" if parallel else "at most one function"
    listed = "\n".join(json.dumps(f.shown(), ensure_ascii=False) for f in functions)
    return (
        "# Tools\n\n"
        f"You may call {how_many} to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{listed}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        f"{TOOL_CALL_OPEN}{TOOL_CALL_CLOSE} XML tags:\n"
        f'{TOOL_CALL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{TOOL_CALL_CLOSE}'
    )


def call_block(name: str, arguments: Any) -> str:
    return f"{TOOL_CALL_OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{TOOL_CALL_CLOSE}"


def render_conversation(
    rendered: list[dict[str, Any]], messages: Sequence[ChatMessage], setup: ToolSetup
) -> list[dict[str, Any]]:
    """The template's messages (`rendered`, one per entry of `messages`, content already in
    template form) with the tools in the system prompt and the history's calls and results in
    Pavana's format. The history is checked as OpenAI checks it: every `tool` message answers
    a call of the assistant message before it."""
    out: list[dict[str, Any]] = []
    pending: dict[str, str] = {}  # call id -> function name, of the last assistant turn's calls
    responses: list[str] = []
    for i, (entry, message) in enumerate(zip(rendered, messages)):
        if message.tool_calls is not None and message.role != "assistant":
            raise invalid_request(f"messages[{i}].tool_calls: only assistant messages make tool calls", param=f"messages[{i}].tool_calls")
        if message.refusal is not None and message.role != "assistant":
            raise invalid_request(f"messages[{i}].refusal: only assistant messages refuse", param=f"messages[{i}].refusal")
        if message.tool_call_id is not None and message.role != "tool":
            raise invalid_request(f"messages[{i}].tool_call_id: only tool messages answer tool calls", param=f"messages[{i}].tool_call_id")
        if message.role == "tool":
            responses.append(_tool_response(i, entry, message, pending))
            continue
        if responses:
            out.append({"role": "user", "content": "\n".join(responses)})
            responses = []
        pending = {}
        if message.role == "assistant":
            entry, pending = _assistant_turn(i, entry, message)
        out.append(entry)
    if responses:
        out.append({"role": "user", "content": "\n".join(responses)})
    if setup.functions:
        out = _with_tools_prompt(out, tools_prompt(setup.functions, setup.plan.parallel if setup.plan else True))
    return out


def _assistant_turn(i: int, entry: dict[str, Any], message: ChatMessage) -> tuple[dict[str, Any], dict[str, str]]:
    content = entry.get("content")
    if not content and message.refusal:
        content = message.refusal
    calls: dict[str, str] = {}
    blocks: list[str] = []
    for j, call in enumerate(message.tool_calls or []):
        where = f"messages[{i}].tool_calls[{j}].function.arguments"
        try:
            arguments = json.loads(call.function.arguments) if call.function.arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise invalid_request(f"{where}: not valid JSON ({exc})", param=where) from None
        blocks.append(call_block(call.function.name, arguments))
        calls[call.id] = call.function.name
    if blocks:
        text = "\n".join(blocks)
        if isinstance(content, list):
            content = [*content, {"type": "text", "text": text}]
        else:
            content = f"{content}\n{text}" if content else text
    return {**entry, "content": content}, calls


def _tool_response(i: int, entry: dict[str, Any], message: ChatMessage, pending: dict[str, str]) -> str:
    if message.tool_call_id is None:
        raise invalid_request(f"messages[{i}].tool_call_id: required in a tool message", param=f"messages[{i}].tool_call_id")
    if message.tool_call_id not in pending:
        raise invalid_request(
            f"messages[{i}].tool_call_id: {message.tool_call_id!r:.80} answers no call of the assistant message before it",
            param=f"messages[{i}].tool_call_id",
        )
    content = message.content
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, TextPart):
                raise invalid_request(f"messages[{i}].content[{j}]: tool results are text", param=f"messages[{i}].content[{j}]")
        content = "\n".join(part.text for part in content)  # type: ignore[union-attr]
    body = json.dumps({"name": pending[message.tool_call_id], "content": content or ""}, ensure_ascii=False)
    return f"<tool_response>\n{body}\n</tool_response>"


def _with_tools_prompt(messages: list[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] in ("system", "developer"):
        first = messages[0]
        content = first.get("content")
        if isinstance(content, list):
            content = [*content, {"type": "text", "text": prompt}]
        else:
            content = f"{content}\n\n{prompt}" if content else prompt
        return [{**first, "content": content}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


# -- reading calls from the output -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CallDelta:
    """A piece of a call as OpenAI streams it: the first piece of a call has its id and name."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedCall:
    id: str
    name: str
    arguments: str  # JSON text


Delta = str | CallDelta  # content text, or a piece of a call

# The start of a call object up to its arguments' first character (so that whitespace before
# the arguments is not sent as part of them).
_CALL_PREFIX = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')
_WHITESPACE_THEN_CLOSE_PREFIX = re.compile(r"\s*(<(/(t(o(o(l(_(c(a(l(l(>)?)?)?)?)?)?)?)?)?)?)?)?")


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _hold_back(text: str, marker: str) -> int:
    """How many characters at the end of `text` may be the start of `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


@dataclass
class _OpenCall:
    start: int  # where the call's JSON begins in the buffer
    id: str = field(default_factory=new_call_id)
    name: str | None = None  # known once streamed
    arguments_start: int = 0
    sent: int = 0  # characters of the arguments streamed


class ToolCallParser:
    """Reads one choice's output, piece by piece, into content and calls (`feed`, then `finish`).

    Content is held back while it may be the start of `<tool_call>`, and whitespace next to
    a call is not content. A forced call (grammar-constrained, so it always parses) streams its
    arguments as they are written; a call in `auto` is sent whole once its closing tag arrives,
    so that a block that turns out not to be a well-formed call of a known function is sent as
    the content it is, never as a broken call.
    """

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.calls: list[ParsedCall] = []
        self._buffer = ""
        self._call: _OpenCall | None = None
        self._search_from = 0
        self._pending_space = ""  # whitespace held until it is known not to border a call
        self._after_call = False

    def feed(self, text: str) -> list[Delta]:
        self._buffer += text
        out: list[Delta] = []
        while True:
            if self._call is None:
                start = self._buffer.find(TOOL_CALL_OPEN)
                if start < 0:
                    keep = _hold_back(self._buffer, TOOL_CALL_OPEN)
                    self._content(self._buffer[: len(self._buffer) - keep], out)
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    return out
                self._content(self._buffer[:start], out)
                self._buffer = self._buffer[start + len(TOOL_CALL_OPEN) :]
                self._call = _OpenCall(start=0)
                self._search_from = 0
                continue
            end = self._buffer.find(TOOL_CALL_CLOSE, self._search_from)
            if end < 0:
                if self.plan.forced:
                    self._stream_arguments(out)
                return out
            if self._close(self._buffer[:end], out):
                self._buffer = self._buffer[end + len(TOOL_CALL_CLOSE) :]
                self._call = None
                self._after_call = True
                continue
            if self.plan.forced:  # the tag was inside a JSON string: the call goes on
                self._search_from = end + 1
                continue
            self._content(TOOL_CALL_OPEN + self._buffer[: end + len(TOOL_CALL_CLOSE)], out)
            self._buffer = self._buffer[end + len(TOOL_CALL_CLOSE) :]
            self._call = None

    def finish(self) -> list[Delta]:
        """At the end of the output: a call cut off at its closing tag (the stop string of a
        one-call request) still counts if it parses; anything else left is content, or, in a
        forced call cut off by `max_tokens`, the rest of its arguments."""
        out: list[Delta] = []
        if self._call is not None:
            body = self._buffer
            if not self._close(body, out):
                if self.plan.forced and self._call.name is not None:
                    rest = body[self._call.arguments_start + self._call.sent :]
                    if rest:
                        out.append(CallDelta(len(self.calls), rest))
                    self.calls.append(ParsedCall(self._call.id, self._call.name, body[self._call.arguments_start :]))
                else:
                    self._content(TOOL_CALL_OPEN + body, out)
            self._call = None
        elif self._buffer:
            self._content(self._buffer, out)
        self._buffer = ""
        if self._pending_space and not self.calls:
            out.append(self._pending_space)
        self._pending_space = ""
        return out

    # -- pieces ---------------------------------------------------------------------------------
    def _content(self, text: str, out: list[Delta]) -> None:
        if self._after_call:
            text = text.lstrip()
            if not text:
                return
            self._after_call = False
        if not text:
            return
        stripped = text.rstrip()
        if not stripped:
            self._pending_space += text
            return
        out.append(self._pending_space + stripped)
        self._pending_space = text[len(stripped) :]

    def _stream_arguments(self, out: list[Delta]) -> None:
        call = self._call
        assert call is not None
        if call.name is None:
            match = _CALL_PREFIX.match(self._buffer)
            if match is None:
                return
            try:
                name = json.loads(f'"{match.group(1)}"')
            except json.JSONDecodeError:
                return
            call.name, call.arguments_start = name, match.end()
            self._pending_space = ""  # whitespace before a call is not content
            out.append(CallDelta(len(self.calls), "", id=call.id, name=name))
        region = self._buffer[call.arguments_start :]
        safe = _safe_arguments_length(region)
        if safe > call.sent:
            out.append(CallDelta(len(self.calls), region[call.sent : safe]))
            call.sent = safe

    def _close(self, body: str, out: list[Delta]) -> bool:
        """Take `body` (the text between the tags) as a call if it is one; say whether it was."""
        call = self._call
        assert call is not None
        parsed = self._parse(body)
        if parsed is None:
            return False
        name, arguments = parsed
        index = len(self.calls)
        self._pending_space = ""  # whitespace before a call is not content
        if call.name is not None:  # streamed: send what is left of the raw arguments
            final = _raw_arguments(body, call.arguments_start)
            if not final.startswith(body[call.arguments_start : call.arguments_start + call.sent]):
                final = arguments  # cannot happen with a grammar; keep the call well-formed anyway
            elif len(final) > call.sent:
                out.append(CallDelta(index, final[call.sent :]))
            self.calls.append(ParsedCall(call.id, name, final))
        else:
            out.append(CallDelta(index, arguments, id=call.id, name=name))
            self.calls.append(ParsedCall(call.id, name, arguments))
        return True

    def _parse(self, body: str) -> tuple[str, str] | None:
        try:
            value = json.loads(body)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict) or set(value) - {"name", "arguments"} or not isinstance(value.get("name"), str):
            return None
        if value["name"] not in self.plan.names:
            return None
        arguments = value.get("arguments", {})
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        if not self.plan.parallel and self.calls:  # one call allowed: a second block is content
            return None
        return value["name"], json.dumps(arguments, ensure_ascii=False)


def _safe_arguments_length(region: str) -> int:
    """How much of a streaming call's argument text can be sent: all but what may be the
    call object's closing brace and what follows it (whitespace, the start of the closing
    tag), and trailing whitespace (trimmed from the final arguments)."""
    last = region.rfind("}")
    if last >= 0 and _WHITESPACE_THEN_CLOSE_PREFIX.fullmatch(region[last + 1 :]):
        return last
    return len(region.rstrip())


def _raw_arguments(body: str, arguments_start: int) -> str:
    """The argument text of a complete call object: from after `"arguments":` to before the
    object's closing brace."""
    text = body[arguments_start:].rstrip()
    return text[:-1].rstrip() if text.endswith("}") else text
