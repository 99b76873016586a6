"""Unit tests of tool calling (router/tools.py, no Ray): the checks of `tools` and
`tool_choice`, the prompt and history in Pavana's format, the forced-call grammar, and the
parser that reads calls from an output however it is split into chunks."""

from __future__ import annotations

import json

import llguidance
import pytest

from router.errors import APIError
from router.protocol import ChatMessage, NamedToolChoice, ToolDefinition
from router.tools import (
    TOOL_CALL_CLOSE,
    CallDelta,
    ToolCallParser,
    ToolPlan,
    call_block,
    check_functions,
    prepare_tools,
    render_conversation,
)
from workers.engine.default_model import ensure_default_model
from workers.engine.tokenizer import Tokenizer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}


def tools(*raw) -> list[ToolDefinition]:
    return [ToolDefinition.model_validate(t) for t in raw]


def messages(*raw) -> list[ChatMessage]:
    return [ChatMessage.model_validate(m) for m in raw]


def template_form(chat: list[ChatMessage]) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in chat]


def refused(call) -> APIError:
    with pytest.raises(APIError) as info:
        call()
    assert info.value.status == 400
    return info.value


@pytest.fixture(scope="module")
def matcher_tokenizer() -> tuple[Tokenizer, llguidance.LLTokenizer]:
    tokenizer = Tokenizer.from_dir(ensure_default_model())
    return tokenizer, llguidance.LLTokenizer(tokenizer.backend.to_str(), eos_token=sorted(tokenizer.eos_token_ids))


def accepts(grammar: str, text: str, matcher_tokenizer) -> bool:
    tokenizer, ll = matcher_tokenizer
    matcher = llguidance.LLMatcher(ll, grammar)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


# -- tools and tool_choice ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ({"type": "function", "function": {"name": "has space"}}, "tools[0].function.name"),
        ({"type": "function", "function": {"name": "x" * 65}}, "tools[0].function.name"),
        ({"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}, "tools[0].function.parameters"),
        ({"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "wat"}}}}}, "tools[0].function.parameters"),
        ({"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": "a"}}}, "tools[0].function.parameters"),
        ({"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/$defs/missing"}}}, "tools[0].function.parameters"),
    ],
)
def test_malformed_tools_are_refused_naming_the_field(raw, param):
    err = refused(lambda: check_functions(tools(raw)))
    assert err.param == param and err.message.startswith(param)


def test_two_tools_of_one_name_are_refused():
    assert refused(lambda: check_functions(tools(ADD, ADD))).param == "tools[1].function.name"


def test_a_function_without_parameters_takes_an_empty_object():
    [function] = check_functions(tools({"type": "function", "function": {"name": "now"}}))
    assert function.parameters["properties"] == {}


def test_tool_choice_is_checked_against_the_tools():
    assert refused(lambda: prepare_tools(None, "required", None)).param == "tool_choice"
    named = NamedToolChoice.model_validate({"type": "function", "function": {"name": "nope"}})
    assert refused(lambda: prepare_tools(tools(ADD), named, None)).param == "tool_choice"
    assert prepare_tools(None, "none", None).plan is None


def test_each_tool_choice_reads_the_output_its_own_way():
    auto = prepare_tools(tools(WEATHER, ADD), None, None)
    assert auto.plan == ToolPlan(frozenset({"get_weather", "add"}), forced=False, parallel=True) and auto.grammar is None
    assert auto.stop == ()
    one = prepare_tools(tools(WEATHER, ADD), "auto", False)
    assert not one.plan.parallel and one.stop == (TOOL_CALL_CLOSE,)
    required = prepare_tools(tools(WEATHER, ADD), "required", None)
    assert required.plan.forced and required.grammar
    named = prepare_tools(tools(WEATHER, ADD), NamedToolChoice.model_validate({"type": "function", "function": {"name": "add"}}), None)
    assert named.plan.names == {"add"} and named.plan.forced
    assert prepare_tools(tools(WEATHER), "none", None).plan is None


# -- the grammar ---------------------------------------------------------------------------------------
def test_the_forced_grammar_takes_calls_in_the_format_and_nothing_else(matcher_tokenizer):
    call = call_block("get_weather", {"city": "Paris", "unit": "C"})
    required = prepare_tools(tools(WEATHER, ADD), "required", None).grammar
    assert accepts(required, call, matcher_tokenizer)
    assert accepts(required, call + "\n" + call_block("add", {"a": 2}), matcher_tokenizer)
    assert not accepts(required, call_block("get_weather", {"city": "Paris"}), matcher_tokenizer)  # unit is required
    assert not accepts(required, call_block("get_weather", {"city": "Paris", "unit": "K"}), matcher_tokenizer)  # not in the enum
    assert not accepts(required, call_block("nope", {}), matcher_tokenizer)
    assert not accepts(required, "Sure! " + call, matcher_tokenizer)
    single = prepare_tools(tools(WEATHER, ADD), "required", False).grammar
    assert accepts(single, call, matcher_tokenizer) and not accepts(single, call + "\n" + call, matcher_tokenizer)
    named = prepare_tools(tools(WEATHER, ADD), NamedToolChoice.model_validate({"type": "function", "function": {"name": "add"}}), None).grammar
    assert accepts(named, call_block("add", {"a": 1}), matcher_tokenizer) and not accepts(named, call, matcher_tokenizer)


# -- the prompt and the history ---------------------------------------------------------------------
def test_tools_join_the_system_message_or_become_one():
    setup = prepare_tools(tools(WEATHER), None, None)
    chat = messages({"role": "user", "content": "Weather in Paris?"})
    out = render_conversation(template_form(chat), chat, setup)
    assert [m["role"] for m in out] == ["system", "user"]
    assert "<tools>" in out[0]["content"] and json.dumps(setup.functions[0].shown()) in out[0]["content"]
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' in out[0]["content"]
    chat = messages({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
    out = render_conversation(template_form(chat), chat, setup)
    assert [m["role"] for m in out] == ["system", "user"] and out[0]["content"].startswith("Be brief.\n\n# Tools")


def test_history_calls_and_results_are_written_in_the_format():
    chat = messages(
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "25 C"}]},
        {"role": "assistant", "content": "Paris 18 C, Rome 25 C."},
    )
    out = render_conversation(template_form(chat), chat, prepare_tools(None, None, None))
    assert [m["role"] for m in out] == ["user", "assistant", "user", "assistant"]
    assert out[1]["content"] == call_block("get_weather", {"city": "Paris"}) + "\n" + call_block("get_weather", {"city": "Rome"})
    assert out[2]["content"] == (
        '<tool_response>\n{"name": "get_weather", "content": "18 C"}\n</tool_response>\n'
        '<tool_response>\n{"name": "get_weather", "content": "25 C"}\n</tool_response>'
    )


@pytest.mark.parametrize(
    ("chat", "param"),
    [
        ([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c1", "content": "r"}], "messages[1].tool_call_id"),
        ([{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
          {"role": "tool", "content": "r"}], "messages[1].tool_call_id"),
        ([{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
          {"role": "tool", "tool_call_id": "c2", "content": "r"}], "messages[1].tool_call_id"),
        ([{"role": "user", "content": "x", "tool_calls": []}], "messages[0].tool_calls"),
        ([{"role": "user", "content": "x", "tool_call_id": "c1"}], "messages[0].tool_call_id"),
        ([{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}],
         "messages[0].tool_calls[0].function.arguments"),
    ],
)
def test_a_history_openai_would_refuse_is_refused(chat, param):
    chat = messages(*chat)
    assert refused(lambda: render_conversation(template_form(chat), chat, prepare_tools(None, None, None))).param == param


# -- reading calls ---------------------------------------------------------------------------------------
def run(parser: ToolCallParser, text: str, step: int) -> tuple[str, dict[int, str], dict[int, str]]:
    deltas = []
    for i in range(0, len(text), step):
        deltas += parser.feed(text[i : i + step])
    deltas += parser.finish()
    content = "".join(d for d in deltas if isinstance(d, str))
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for d in deltas:
        if isinstance(d, CallDelta):
            arguments[d.index] = arguments.get(d.index, "") + d.arguments
            if d.name is not None:
                names[d.index] = d.name
    return content, names, arguments


@pytest.mark.parametrize("step", [1, 2, 3, 5, 8, 13, 1000])
def test_forced_calls_stream_arguments_that_reassemble_to_json_however_the_text_is_split(step):
    plan = ToolPlan(frozenset({"get_weather", "add"}), forced=True, parallel=True)
    text = (
        call_block("get_weather", {"city": "Par}is </tool_call>", "unit": "C"}) + "\n" + call_block("add", {"a": 12})
    )
    parser = ToolCallParser(plan)
    content, names, arguments = run(parser, text, step)
    assert content == "" and names == {0: "get_weather", 1: "add"}
    assert json.loads(arguments[0]) == {"city": "Par}is </tool_call>", "unit": "C"} and json.loads(arguments[1]) == {"a": 12}
    assert [c.arguments for c in parser.calls] == [arguments[0], arguments[1]]
    assert len({c.id for c in parser.calls}) == 2


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_auto_reads_calls_of_known_functions_and_keeps_everything_else_as_content(step):
    plan = ToolPlan(frozenset({"get_weather"}), forced=False, parallel=True)
    text = (
        "Let me check. " + call_block("get_weather", {"city": "Paris"}) + "\n"
        '<tool_call>{"name": "unknown", "arguments": {}}</tool_call> and <tool_call>not json</tool_call> a < b <tool_'
    )
    parser = ToolCallParser(plan)
    content, names, arguments = run(parser, text, step)
    assert names == {0: "get_weather"} and json.loads(arguments[0]) == {"city": "Paris"}
    assert content == 'Let me check.<tool_call>{"name": "unknown", "arguments": {}}</tool_call> and <tool_call>not json</tool_call> a < b <tool_'


def test_text_that_only_looks_like_the_start_of_a_call_is_held_back_then_sent():
    parser = ToolCallParser(ToolPlan(frozenset({"f"}), forced=False, parallel=True))
    assert parser.feed("x <tool") == ["x"]
    assert parser.feed("box") == [" <toolbox"]
    assert parser.finish() == []


def test_without_calls_the_content_is_the_output_exactly():
    parser = ToolCallParser(ToolPlan(frozenset({"f"}), forced=False, parallel=True))
    content, names, _ = run(parser, "  Hello,\n world  \n", 3)
    assert content == "  Hello,\n world  \n" and names == {}


def test_a_call_cut_off_by_the_one_call_stop_string_still_counts():
    parser = ToolCallParser(ToolPlan(frozenset({"add"}), forced=False, parallel=False))
    content, names, arguments = run(parser, 'Sure.\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n', 4)
    assert content == "Sure." and names == {0: "add"} and json.loads(arguments[0]) == {"a": 1}


def test_a_forced_call_cut_off_by_max_tokens_sends_what_was_written():
    parser = ToolCallParser(ToolPlan(frozenset({"add"}), forced=True, parallel=True))
    content, names, arguments = run(parser, '<tool_call>\n{"name": "add", "arguments": {"a": 12', 2)
    assert content == "" and names == {0: "add"} and arguments[0] == '{"a": 12'
