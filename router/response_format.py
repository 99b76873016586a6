"""Structured outputs: a JSON Schema (or OpenAI's `response_format`) as an llguidance grammar
that the engine's sampler enforces token by token.

Why llguidance: it compiles a schema lazily (no ahead-of-time automaton over the whole
vocabulary, so a new schema costs milliseconds, not seconds), computes a token mask in tens
of microseconds, takes both JSON Schema and Lark grammars — the second lets a forced tool call
embed its arguments' schema in Pavana's tool-call format (`router/tools.py`) — and is a Rust
library without Python dependencies. The grammar is checked here, in the router, so that a
schema llguidance cannot compile is a 400 that names the problem instead of an engine error.

The JSON is written compactly with the separators of Python's `json.dumps` (`", "` and
`": "`) and no other whitespace: with flexible whitespace a weak model may fill its whole
budget with spaces and newlines, which the schema allows but nobody wants.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llguidance import LLMatcher

from router.errors import invalid_request
from router.protocol import ResponseFormat

JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# OpenAI's rule for names of schemas and functions.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
INVALID_SCHEMA = "invalid_json_schema"


def json_schema_grammar(schema: dict[str, Any], param: str) -> str:
    """An llguidance grammar for JSON that validates against `schema`; a schema llguidance
    cannot compile (bad keywords, a `$ref` to nowhere, an unparsable `pattern`) is a 400 with
    llguidance's own reason."""
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except (ValueError, TypeError) as exc:
        raise invalid_request(f"{param}: not a usable JSON schema: {exc}", param=param, code=INVALID_SCHEMA) from None
    check_grammar(grammar, param)
    return grammar


def check_grammar(grammar: str, param: str) -> None:
    """Compile the grammar once (without a tokenizer: the mask needs one, the check does not)."""
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise invalid_request(f"{param}: not a usable JSON schema: {error}", param=param, code=INVALID_SCHEMA)


def lark_json(schema: dict[str, Any]) -> str:
    """`schema` as an llguidance Lark `%json` term, written with Pavana's JSON options."""
    own = schema.get("x-guidance")
    options = {**JSON_OPTIONS, **(own if isinstance(own, dict) else {})}
    return "%json " + json.dumps({**schema, "x-guidance": options}, ensure_ascii=False)


def response_format_grammar(fmt: ResponseFormat | None) -> str | None:
    """The grammar a chat request's `response_format` asks for, or None for plain text.

    `json_object` is any JSON object. `json_schema` is always enforced, whatever `strict`
    says: a schema the output does not follow helps no client, and constrained decoding costs
    the model nothing it would have written anyway."""
    if fmt is None or fmt.type == "text":
        if fmt is not None and fmt.json_schema is not None:
            raise invalid_request("response_format.json_schema: only allowed with type 'json_schema'", param="response_format.json_schema")
        return None
    if fmt.type == "json_object":
        if fmt.json_schema is not None:
            raise invalid_request("response_format.json_schema: only allowed with type 'json_schema'", param="response_format.json_schema")
        return json_schema_grammar({"type": "object"}, "response_format")
    spec = fmt.json_schema
    if spec is None:
        raise invalid_request("response_format.json_schema: required with type 'json_schema'", param="response_format.json_schema")
    if not NAME_PATTERN.match(spec.name):
        raise invalid_request(
            f"response_format.json_schema.name: must be 1 to 64 letters, digits, '_' or '-', got {spec.name!r:.80}",
            param="response_format.json_schema.name",
        )
    if spec.json_schema is None:
        raise invalid_request("response_format.json_schema.schema: required", param="response_format.json_schema.schema")
    return json_schema_grammar(spec.json_schema, "response_format.json_schema.schema")
