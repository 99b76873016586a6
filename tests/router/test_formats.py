"""Unit tests of the response bodies and stream chunks (router/formats.py, router/logprobs.py;
no Ray): `n` choices, logprobs in both endpoints' shapes, `echo`, tool calls, and a collected
response that agrees with the stream."""

from __future__ import annotations

import json
import math

import pytest

from router.formats import ChatFormat, CompletionFormat
from router.logprobs import LOGPROB_FLOOR, TokenTexts
from router.tools import ToolPlan, call_block
from workers.engine.default_model import ensure_default_model
from workers.engine.tokenizer import Tokenizer
from workers.requests import TokenChunk, TokenLogprob


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_dir(ensure_default_model())


@pytest.fixture(scope="module")
def texts(tokenizer) -> TokenTexts:
    return TokenTexts(tokenizer)


def chunks_of(tokenizer, text: str, pieces: int, *, logprobs: bool = False, finish: str = "stop") -> list[TokenChunk]:
    """`text` as the engine would stream it, in about `pieces` chunks of whole tokens."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    size = max(1, math.ceil(len(ids) / pieces))
    out, done = [], ""
    for start in range(0, len(ids), size):
        part = ids[start : start + size]
        now = tokenizer.decode(ids[: start + len(part)])
        records = tuple(TokenLogprob(t, -0.5, ((t, -0.5), (4, -float("inf")))) for t in part) if logprobs else ()
        last = start + size >= len(ids)
        out.append(TokenChunk("r", part, now[len(done) :], finished=last, finish_reason=finish if last else None, logprobs=records))
        done = now
    return out


def events(fmt, items) -> list[dict]:
    out = [e.model_dump() for e in fmt.start()]
    for index, chunk in items:
        out += [e.model_dump() for e in fmt.chunk(index, chunk)]
    return out


# -- token texts -------------------------------------------------------------------------------------
def test_token_texts_are_the_tokens_own_bytes(tokenizer, texts):
    [token] = tokenizer.encode(" the", add_special_tokens=False)[:1]
    assert texts.token_bytes(token).decode() == tokenizer.decode([token])
    partial = next(i for i in range(4, 512) if texts.token_bytes(i) and not _is_utf8(texts.token_bytes(i)))
    assert texts.token_str(partial).startswith("bytes:\\x")
    assert texts.token_bytes(10**6) == b""


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
        return True
    except UnicodeDecodeError:
        return False


# -- chat ---------------------------------------------------------------------------------------------
def test_n_streamed_choices_carry_their_index_and_the_usage_counts_them_all(tokenizer, texts):
    fmt = ChatFormat("r", "m", 5, n=2, texts=texts)
    a, b = chunks_of(tokenizer, "The wind moved", 2), chunks_of(tokenizer, "over the hills", 3)
    items = [(0, a[0]), (1, b[0]), (1, b[1]), (0, a[1]), (1, b[2])]
    out = events(fmt, items)
    assert [(e["choices"][0]["index"], e["choices"][0]["delta"]["role"]) for e in out[:2]] == [(0, "assistant"), (1, "assistant")]
    text = {i: "".join(e["choices"][0]["delta"]["content"] or "" for e in out if e["choices"][0]["index"] == i) for i in (0, 1)}
    assert text == {0: "The wind moved", 1: "over the hills"}
    finishes = [(e["choices"][0]["index"], e["choices"][0]["finish_reason"]) for e in out if e["choices"][0]["finish_reason"]]
    assert finishes == [(0, "stop"), (1, "stop")]
    usage = fmt.usage_chunk().model_dump()["usage"]
    assert usage == {"prompt_tokens": 5, "completion_tokens": sum(len(c.token_ids) for c in a + b), "total_tokens": 5 + usage["completion_tokens"]}


def test_chat_logprobs_name_each_token_with_its_bytes_and_alternatives(tokenizer, texts):
    fmt = ChatFormat("r", "m", 3, texts=texts, logprobs=True)
    for chunk in chunks_of(tokenizer, "Hello world", 2, logprobs=True):
        fmt.add(0, chunk)
    body = fmt.response().model_dump()
    content = body["choices"][0]["logprobs"]["content"]
    ids = tokenizer.encode("Hello world", add_special_tokens=False)
    assert [c["token"] for c in content] == [texts.token_str(t) for t in ids]
    assert b"".join(bytes(c["bytes"]) for c in content).decode() == "Hello world"
    assert all(c["logprob"] == -0.5 and c["top_logprobs"][0]["token"] == c["token"] for c in content)
    assert content[0]["top_logprobs"][1]["logprob"] == LOGPROB_FLOOR  # -inf is not JSON
    json.dumps(body, allow_nan=False)


def test_streamed_and_collected_tool_calls_agree(tokenizer, texts):
    plan = ToolPlan(frozenset({"get_weather"}), forced=True, parallel=True)
    text = call_block("get_weather", {"city": "Paris"}) + "\n" + call_block("get_weather", {"city": "Rome"})
    streamed = ChatFormat("r", "m", 3, texts=texts, tools=plan)
    out = events(streamed, [(0, c) for c in chunks_of(tokenizer, text, 9)])
    deltas = [d for e in out for d in (e["choices"][0]["delta"]["tool_calls"] or [])]
    first = [d for d in deltas if d["id"]]
    assert [(d["index"], d["type"], d["function"]["name"]) for d in first] == [(0, "function", "get_weather"), (1, "function", "get_weather")]
    arguments = {i: "".join(d["function"]["arguments"] or "" for d in deltas if d["index"] == i) for i in (0, 1)}
    assert {i: json.loads(a) for i, a in arguments.items()} == {0: {"city": "Paris"}, 1: {"city": "Rome"}}
    assert all(not e["choices"][0]["delta"]["content"] for e in out[1:])
    assert out[-1]["choices"][0]["finish_reason"] == "tool_calls"
    collected = ChatFormat("r", "m", 3, texts=texts, tools=plan)
    for c in chunks_of(tokenizer, text, 9):
        collected.add(0, c)
    message = collected.response().model_dump()["choices"][0]
    assert message["finish_reason"] == "tool_calls" and message["message"]["content"] is None
    calls = message["message"]["tool_calls"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [json.loads(a) for a in arguments.values()]


def test_a_cut_off_call_keeps_length_as_its_finish_reason(tokenizer, texts):
    plan = ToolPlan(frozenset({"f"}), forced=True, parallel=True)
    fmt = ChatFormat("r", "m", 3, texts=texts, tools=plan)
    for c in chunks_of(tokenizer, '<tool_call>\n{"name": "f", "arguments": {"a": ', 3, finish="length"):
        fmt.add(0, c)
    assert fmt.response().model_dump()["choices"][0]["finish_reason"] == "length"


# -- completions ---------------------------------------------------------------------------------------
def test_echo_with_logprobs_puts_the_prompt_first(tokenizer, texts):
    prompt = tokenizer.encode("The wind", add_special_tokens=True)
    prompt_logprobs = (None, *(TokenLogprob(t, -1.0, ((t, -1.0),)) for t in prompt[1:]))
    fmt = CompletionFormat("r", "m", len(prompt), texts=texts, logprobs=True, echo="The wind", prompt_token_ids=prompt)
    chunks = chunks_of(tokenizer, " moved over", 2, logprobs=True)
    chunks[0] = TokenChunk(**{**{f: getattr(chunks[0], f) for f in chunks[0].__dataclass_fields__}, "prompt_logprobs": prompt_logprobs})
    out = events(fmt, [(0, c) for c in chunks])
    assert "".join(e["choices"][0]["text"] for e in out) == "The wind moved over"
    logprobs = out[0]["choices"][0]["logprobs"]
    assert logprobs["tokens"][: len(prompt)] == [texts.token_str(t) for t in prompt]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert logprobs["token_logprobs"][1:len(prompt)] == [-1.0] * (len(prompt) - 1)
    offsets = [o for e in out for o in e["choices"][0]["logprobs"]["text_offset"]]
    tokens = [t for e in out for t in e["choices"][0]["logprobs"]["tokens"]]
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    collected = CompletionFormat("r", "m", len(prompt), texts=texts, logprobs=True, echo="The wind", prompt_token_ids=prompt)
    for c in chunks:
        collected.add(0, c)
    whole = collected.response().model_dump()["choices"][0]
    assert whole["text"] == "The wind moved over" and whole["logprobs"]["tokens"] == tokens


def test_completions_without_logprobs_say_null(tokenizer, texts):
    fmt = CompletionFormat("r", "m", 2, n=2, texts=texts)
    for i in (0, 1):
        for c in chunks_of(tokenizer, "hi there", 2):
            fmt.add(i, c)
    body = fmt.response().model_dump()
    assert [c["index"] for c in body["choices"]] == [0, 1] and all(c["logprobs"] is None for c in body["choices"])
