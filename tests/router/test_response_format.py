"""Unit tests of structured outputs in the router (router/response_format.py, no Ray): which
grammar each `response_format` asks for, what it accepts, and schemas refused with a 400."""

from __future__ import annotations

import json

import llguidance
import pytest

from router.errors import APIError
from router.protocol import ResponseFormat
from router.response_format import json_schema_grammar, response_format_grammar
from workers.engine.default_model import ensure_default_model
from workers.engine.tokenizer import Tokenizer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 8}, "zip": {"type": "integer"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "role", "address"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizers() -> tuple[Tokenizer, llguidance.LLTokenizer]:
    tokenizer = Tokenizer.from_dir(ensure_default_model())
    return tokenizer, llguidance.LLTokenizer(tokenizer.backend.to_str(), eos_token=sorted(tokenizer.eos_token_ids))


def accepts(grammar: str, value, tokenizers) -> bool:
    tokenizer, ll = tokenizers
    matcher = llguidance.LLMatcher(ll, grammar)
    ids = tokenizer.encode(json.dumps(value), add_special_tokens=False)
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


def fmt(raw: dict) -> ResponseFormat:
    return ResponseFormat.model_validate(raw)


def refused(call) -> APIError:
    with pytest.raises(APIError) as info:
        call()
    assert info.value.status == 400
    return info.value


def test_text_asks_for_no_grammar():
    assert response_format_grammar(None) is None and response_format_grammar(fmt({"type": "text"})) is None


def test_json_object_takes_any_object_and_nothing_else(tokenizers):
    grammar = response_format_grammar(fmt({"type": "json_object"}))
    assert accepts(grammar, {"a": [1, {"b": None}]}, tokenizers) and accepts(grammar, {}, tokenizers)
    assert not accepts(grammar, [1, 2], tokenizers) and not accepts(grammar, "text", tokenizers)


def test_a_json_schema_is_enforced_whatever_strict_says(tokenizers):
    for strict in (True, False, None):
        grammar = response_format_grammar(fmt({"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": strict}}))
        assert accepts(grammar, {"name": "Ada", "role": "admin", "tags": ["x"], "address": {"city": "Rome", "zip": 100}}, tokenizers)
        assert not accepts(grammar, {"name": "Ada", "role": "root", "address": {"city": "Rome"}}, tokenizers)  # enum
        assert not accepts(grammar, {"name": "Ada", "address": {"city": "Rome"}}, tokenizers)  # required
        assert not accepts(grammar, {"name": "Ada", "role": "user", "address": {"city": "Rome", "x": 1}}, tokenizers)  # extra


def test_the_json_is_compact_with_pythons_separators(tokenizers):
    grammar = json_schema_grammar({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}, "p")
    tokenizer, ll = tokenizers
    for text, ok in [('{"a": 1, "b": 2}', True), ('{"a":1,"b":2}', False), ('{ "a": 1, "b": 2 }', False)]:
        matcher = llguidance.LLMatcher(ll, grammar)
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert (matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()) == ok, text


@pytest.mark.parametrize(
    ("raw", "param", "says"),
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}, "response_format.json_schema.schema", "wat"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/b"}}}}},
         "response_format.json_schema.schema", "$defs/b"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(("}}},
         "response_format.json_schema.schema", "regex"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema", "required"),
        ({"type": "json_schema", "json_schema": {"name": "no spaces allowed", "schema": {}}}, "response_format.json_schema.name", "letters"),
        ({"type": "json_schema"}, "response_format.json_schema", "required"),
        ({"type": "json_object", "json_schema": {"name": "x", "schema": {}}}, "response_format.json_schema", "only allowed"),
    ],
)
def test_unusable_formats_are_refused_naming_the_problem(raw, param, says):
    err = refused(lambda: response_format_grammar(fmt(raw)))
    assert err.param == param and says in err.message
