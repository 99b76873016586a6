"""The OpenAI API's features beyond plain generation, end to end with the real `openai` client
against the session's cluster (`served`, disaggregated) and the colocated application:
tool calling, structured outputs, logprobs, `n`, penalties, `echo`, the tokenizer endpoints,
and the 400s for what cannot be served.

The model is the tiny random one: its words mean nothing, so the tests check what the API
promises whatever the model writes — calls that parse, JSON that validates, logprobs that
agree with greedy choices, seeds that repeat.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.router.conftest import API_KEY, Served

pytestmark = pytest.mark.ray

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"], "additionalProperties": False},
    },
}
# Every string and array bounded, no extra properties: any path through the schema finishes
# within the token budget, whatever a random model picks.
ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "status": {"enum": ["open", "paid", "shipped"]},
        "paid": {"type": "boolean"},
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 2,
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string", "maxLength": 4}, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                "required": ["sku", "qty"],
                "additionalProperties": False,
            },
        },
        "customer": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 6}, "vip": {"type": "boolean"}},
            "required": ["name", "vip"],
            "additionalProperties": False,
        },
    },
    "required": ["id", "status", "paid", "items", "customer"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.http_url, api_key=API_KEY, max_retries=0, timeout=120)


def post(served: Served, path: str, body: dict, root: bool = False) -> httpx.Response:
    base = served.http_url.removesuffix("/v1") if root else served.http_url
    return httpx.post(base + path, json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)


# -- tool calling -----------------------------------------------------------------------------------
@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}], ids=["required", "named"])
def test_a_tool_call_round_trip(client, served, tool_choice):
    """Call ▸ the tool's result in the history ▸ an answer, as an agent framework runs it."""
    first = client.chat.completions.create(
        model=served.model, messages=MESSAGES, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=tool_choice,
        parallel_tool_calls=False, max_tokens=150, temperature=0,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    if isinstance(tool_choice, dict):
        assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    schema = {WEATHER_TOOL["function"]["name"]: WEATHER_TOOL, TIME_TOOL["function"]["name"]: TIME_TOOL}[call.function.name]
    jsonschema.validate(arguments, schema["function"]["parameters"])
    history = [*MESSAGES, choice.message, {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"}]
    answer = client.chat.completions.create(
        model=served.model, messages=history, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="none", max_tokens=8, temperature=0
    )
    assert answer.choices[0].message.tool_calls is None and isinstance(answer.choices[0].message.content, str)
    assert answer.choices[0].finish_reason in ("stop", "length")
    # The call and its result are in the prompt the model saw (the tools are not: tool_choice none).
    question_only = post(served, "/tokenize", {"messages": MESSAGES}, root=True).json()["count"]
    call_text = f'<tool_call>\n{{"name": "{call.function.name}", "arguments": {call.function.arguments}}}\n</tool_call>'
    assert answer.usage.prompt_tokens >= question_only + len(_tokens(served, call_text)) + len(_tokens(served, "18 degrees, sunny"))


def test_streamed_tool_call_deltas_reassemble_to_valid_arguments(client, served):
    stream = client.chat.completions.create(
        model=served.model, messages=MESSAGES, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required",
        parallel_tool_calls=False, max_tokens=150, temperature=0.8, seed=3, stream=True,
    )
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        delta = chunk.choices[0].delta
        assert not delta.content
        for piece in delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": None, "name": None, "arguments": ""})
            if piece.id:
                assert call["id"] is None and piece.type == "function"
                call["id"], call["name"] = piece.id, piece.function.name
            call["arguments"] += piece.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    call = calls[0]
    assert call["id"].startswith("call_")
    tool = {"get_weather": WEATHER_TOOL, "get_time": TIME_TOOL}[call["name"]]
    jsonschema.validate(json.loads(call["arguments"]), tool["function"]["parameters"])


def test_auto_tool_choice_answers_with_content_or_calls(client, served):
    out = client.chat.completions.create(model=served.model, messages=MESSAGES, tools=[WEATHER_TOOL], max_tokens=12, temperature=0)
    message = out.choices[0].message
    assert message.content or message.tool_calls
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize(
    ("tools", "extra", "param"),
    [
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "nope"}}}}}], {}, "tools[0].function.parameters"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], {}, "tools[0].function.parameters"),
        ([{"type": "function", "function": {"name": "bad name"}}], {}, "tools[0].function.name"),
        ([{"type": "function"}], {}, "tools[0].function"),
        ([{"type": "retrieval", "function": {"name": "f"}}], {}, "tools[0].type"),
        ([WEATHER_TOOL], {"tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
        (None, {"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_malformed_tools_are_400s_naming_the_field(client, served, tools, extra, param):
    body = {"model": served.model, "messages": MESSAGES, "max_tokens": 4, **extra}
    if tools is not None:
        body["tools"] = tools
    response = post(served, "/chat/completions", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


# -- structured outputs ---------------------------------------------------------------------------------
def _json_schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "order", "schema": schema, "strict": True}}


def check_structured_outputs(client: openai.OpenAI, model: str) -> None:
    for seed in (1, 2):
        out = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "An order, as JSON."}], response_format=_json_schema_format(ORDER_SCHEMA),
            max_tokens=250, temperature=1.0, seed=seed,
        )
        assert out.choices[0].finish_reason == "stop", out.choices[0]
        jsonschema.validate(json.loads(out.choices[0].message.content), ORDER_SCHEMA)
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "JSON please"}], response_format={"type": "json_object"},
        max_tokens=30, temperature=0, stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    if finish == ["stop"]:  # a random model's object may also run to max_tokens
        assert isinstance(json.loads(text), dict)
    else:
        assert finish == ["length"] and text.startswith("{")


def test_json_schema_outputs_validate_disaggregated(client, served):
    check_structured_outputs(client, served.model)


def test_json_schema_outputs_validate_colocated(served, colocated_app):
    check_structured_outputs(openai.OpenAI(base_url=colocated_app, api_key=API_KEY, max_retries=0, timeout=120), served.model)


def test_a_schema_that_cannot_finish_in_max_tokens_ends_with_length(client, served):
    schema = {"type": "object", "properties": {"text": {"type": "string", "minLength": 200}}, "required": ["text"], "additionalProperties": False}
    out = client.chat.completions.create(
        model=served.model, messages=MESSAGES, response_format=_json_schema_format(schema), max_tokens=10, temperature=0
    )
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 10
    assert out.choices[0].message.content.startswith('{"')


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        (_json_schema_format({"type": "object", "properties": {"a": {"type": "wat"}}}), "response_format.json_schema.schema"),
        (_json_schema_format({"type": "string", "pattern": "(("}), "response_format.json_schema.schema"),
        (_json_schema_format({"$ref": "#/$defs/none"}), "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": "not a schema"}}, "response_format.json_schema.schema"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "yaml"}, "response_format.type"),
    ],
)
def test_invalid_schemas_are_400s_naming_the_problem(served, client, response_format, param):
    response = post(served, "/chat/completions", {"model": served.model, "messages": MESSAGES, "response_format": response_format})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"].startswith(param)


# -- logprobs, n, penalties, echo ---------------------------------------------------------------------
def test_chat_logprobs_agree_with_greedy_choices(client, served):
    out = client.chat.completions.create(
        model=served.model, messages=MESSAGES, max_tokens=10, temperature=0, logprobs=True, top_logprobs=5, extra_body={"ignore_eos": True}
    )
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens == 10
    for entry in content:
        assert len(entry.top_logprobs) == 5 and entry.logprob <= 0
        assert entry.token == entry.top_logprobs[0].token and entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)


def test_completion_logprobs_and_echo(client, served):
    prompt = "The wind moved over the hills"
    out = client.completions.create(model=served.model, prompt=prompt, max_tokens=6, temperature=0, logprobs=3, extra_body={"ignore_eos": True})
    logprobs = out.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 6
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert len(top) <= 3 and max(top.values()) == pytest.approx(logprob) and top[token] == pytest.approx(logprob)
    echoed = client.completions.create(model=served.model, prompt=prompt, max_tokens=6, temperature=0, echo=True, extra_body={"ignore_eos": True})
    assert echoed.choices[0].text == prompt + out.choices[0].text and echoed.choices[0].logprobs is None
    both = client.completions.create(model=served.model, prompt=prompt, max_tokens=6, temperature=0, echo=True, logprobs=1, extra_body={"ignore_eos": True})
    num_prompt = both.usage.prompt_tokens
    assert both.choices[0].text == echoed.choices[0].text
    assert len(both.choices[0].logprobs.tokens) == num_prompt + 6
    assert both.choices[0].logprobs.token_logprobs[0] is None and all(lp <= 0 for lp in both.choices[0].logprobs.token_logprobs[1:])
    assert both.choices[0].logprobs.tokens[num_prompt:] == logprobs.tokens
    streamed = list(client.completions.create(model=served.model, prompt=prompt, max_tokens=6, temperature=0, echo=True, stream=True,
                                              extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in streamed) == echoed.choices[0].text


def test_n_choices_with_a_seed_are_repeatable(client, served):
    kwargs = dict(model=served.model, messages=MESSAGES, max_tokens=8, temperature=1.0, seed=1234, n=3)
    first, again = client.chat.completions.create(**kwargs), client.chat.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in first.choices}) > 1  # seeds seed + i: the copies differ
    streamed = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = {i: "".join(c.choices[0].delta.content or "" for c in streamed if c.choices and c.choices[0].index == i) for i in range(3)}
    assert [text[i] for i in range(3)] == [c.message.content for c in first.choices]
    assert streamed[-1].usage.completion_tokens == first.usage.completion_tokens
    assert streamed[-1].usage.prompt_tokens == first.usage.prompt_tokens  # the prompt counts once


def test_penalties_change_greedy_output(client, served):
    def run(**extra):
        extra.setdefault("extra_body", {"ignore_eos": True})
        out = client.completions.create(model=served.model, prompt="the the the the", max_tokens=24, temperature=0, **extra)
        return out.choices[0].text

    plain = run()
    assert run(frequency_penalty=2.0) != plain
    assert run(presence_penalty=2.0) != plain
    assert run(extra_body={"ignore_eos": True, "repetition_penalty": 1.5}) != plain
    assert run(logit_bias={str(t): -100 for t in _tokens(served, plain)}) != plain


def _tokens(served: Served, text: str) -> list[int]:
    return post(served, "/tokenize", {"model": served.model, "prompt": text, "add_special_tokens": False}, root=True).json()["tokens"]


# -- the tokenizer endpoints and the model card -------------------------------------------------------
def test_tokenize_and_detokenize_round_trip(client, served):
    text = "The wind moved over the hills"
    tokenized = post(served, "/tokenize", {"model": served.model, "prompt": text}, root=True)
    assert tokenized.status_code == 200, tokenized.text
    body = tokenized.json()
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == client.models.retrieve(served.model).max_model_len
    completion = client.completions.create(model=served.model, prompt=text, max_tokens=1)
    assert body["count"] == completion.usage.prompt_tokens
    assert post(served, "/detokenize", {"model": served.model, "tokens": body["tokens"]}, root=True).json() == {"prompt": text}
    chat = post(served, "/tokenize", {"model": served.model, "messages": MESSAGES}, root=True).json()
    answer = client.chat.completions.create(model=served.model, messages=MESSAGES, max_tokens=1)
    assert chat["count"] == answer.usage.prompt_tokens
    with_strs = post(served, "/tokenize", {"prompt": "hi there", "return_token_strs": True}, root=True).json()
    assert "".join(with_strs["token_strs"][1:]) == "hi there"


def test_tokenizer_endpoints_need_a_key_and_good_input(served):
    root = served.http_url.removesuffix("/v1")
    assert httpx.post(f"{root}/tokenize", json={"prompt": "hi"}, timeout=30).status_code == 401
    assert post(served, "/detokenize", {"tokens": [10**6]}, root=True).json()["error"]["param"] == "tokens"
    assert post(served, "/tokenize", {"prompt": "hi", "messages": MESSAGES}, root=True).json()["error"]["param"] == "prompt"
    assert post(served, "/tokenize", {"text": "hi"}, root=True).json()["error"]["param"] == "text"


def test_models_report_max_model_len(client, served):
    [card] = client.models.list().data
    assert card.max_model_len == client.models.retrieve(served.model).max_model_len > 0
    assert card.max_model_len == post(served, "/tokenize", {"prompt": "hi"}, root=True).json()["max_model_len"]


# -- fields -----------------------------------------------------------------------------------------------
def test_unknown_fields_are_400s_naming_them_and_harmless_ones_pass(client, served):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=served.model, messages=MESSAGES, max_tokens=2, extra_body={"temprature": 0})
    assert info.value.body["param"] == "temprature" and "unknown field" in info.value.body["message"]
    out = client.chat.completions.create(
        model=served.model, messages=MESSAGES, max_tokens=2, user="tester", store=False, metadata={"app": "tests"},
        service_tier="auto", parallel_tool_calls=True, extra_body={"priority": 1, "min_p": 0.05, "min_tokens": 2,
                                                                     "repetition_penalty": 1.1, "stop_token_ids": [3]},
    )
    assert out.usage.completion_tokens == 2
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=served.model, prompt="hi", max_tokens=2, best_of=3)
    assert info.value.body["param"] == "best_of"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=served.model, prompt="hi", max_tokens=2, suffix="end")
    assert info.value.body["param"] == "suffix"
