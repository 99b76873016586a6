"""The OpenAI-compatible HTTP API end to end: real Ray Serve, the real `openai` client.

Every test shares one cluster (`served` in conftest.py). Bad requests are each followed by a
good one, so a refusal that broke the ingress would show at once.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import openai
import pytest

from tests.router.conftest import API_KEY, Served

pytestmark = pytest.mark.ray

PROMPTS = ["The wind moved over the hills", "Numbers matter when you measure a system.", "Hello"]


@pytest.fixture(scope="module")
def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.http_url, api_key=API_KEY, max_retries=0, timeout=120)


def assert_serving(client: openai.OpenAI, model: str) -> None:
    out = client.completions.create(model=model, prompt="Hello", max_tokens=2, temperature=0)
    assert out.usage.completion_tokens >= 1


# -- happy paths -----------------------------------------------------------------------------------
def test_models_list(client, served):
    models = client.models.list()
    assert [m.id for m in models.data] == [served.model]
    assert client.models.retrieve(served.model).id == served.model


def test_health_and_readiness(served):
    root = served.http_url.removesuffix("/v1")
    assert httpx.get(f"{root}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{root}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready" and ready.json()["pools"]


def test_unknown_routes_get_openai_error_bodies(served):
    response = httpx.get(f"{served.http_url}/no-such-route", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    assert httpx.get(f"{served.http_url}/completions", timeout=30).status_code == 405


def test_completion(client, served):
    out = client.completions.create(model=served.model, prompt=PROMPTS[0], max_tokens=12, temperature=0)
    assert out.object == "text_completion" and out.model == served.model
    choice = out.choices[0]
    assert isinstance(choice.text, str) and choice.finish_reason in ("stop", "length")
    assert 1 <= out.usage.completion_tokens <= 12
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_completion_stream_matches_the_whole_answer_and_ends_with_usage(client, served):
    whole = client.completions.create(model=served.model, prompt=PROMPTS[1], max_tokens=16, temperature=0)
    chunks = list(client.completions.create(
        model=served.model, prompt=PROMPTS[1], max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True}
    ))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [whole.choices[0].finish_reason]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == whole.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == whole.usage.prompt_tokens


def test_chat(client, served):
    out = client.chat.completions.create(
        model=served.model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_completion_tokens=10, temperature=0,
    )
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant" and isinstance(out.choices[0].message.content, str)
    assert 1 <= out.usage.completion_tokens <= 10


def test_chat_stream(client, served):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Tell me about the wind"}]}]
    whole = client.chat.completions.create(model=served.model, messages=messages, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(
        model=served.model, messages=messages, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


@pytest.mark.parametrize("stream_options", [None, {"include_usage": False}, {}])
def test_streams_carry_no_usage_unless_the_client_asks(served, stream_options):
    """OpenAI's default: the usage chunk only with `stream_options.include_usage`."""
    body = {"model": served.model, "prompt": "Hello", "max_tokens": 3, "stream": True}
    if stream_options is not None:
        body["stream_options"] = stream_options
    raw = httpx.post(f"{served.http_url}/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60, json=body)
    events = [line.removeprefix("data: ") for line in raw.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["usage"] is None and json.loads(e)["choices"] for e in events[:-1])


def test_greedy_output_is_the_same_disaggregated_colocated_and_direct(client, served, colocated_app, direct_engine):
    from workers.engine.sampling import SamplingParams

    colocated = openai.OpenAI(base_url=colocated_app, api_key=API_KEY, max_retries=0, timeout=120)
    tokenizer = direct_engine.tokenizer
    for prompt in PROMPTS:
        kwargs = dict(model=served.model, prompt=prompt, max_tokens=24, temperature=0)
        disaggregated = client.completions.create(**kwargs)
        together = colocated.completions.create(**kwargs)
        [direct_ids] = direct_engine.generate([tokenizer.encode(prompt)], SamplingParams(max_tokens=24, temperature=0))
        assert disaggregated.choices[0].text == together.choices[0].text == tokenizer.decode(direct_ids), prompt
        assert disaggregated.usage.completion_tokens == together.usage.completion_tokens == len(direct_ids)
    if served.spec.pools.get("vision") is not None:  # images too: vision ▸ prefill ▸ decode, or vision ▸ colocated
        content = [{"type": "image_url", "image_url": {"url": png_data_url()}}, {"type": "text", "text": "Describe it."}]
        kwargs = dict(model=served.model, messages=[{"role": "user", "content": content}], max_tokens=16, temperature=0)
        answers = [c.chat.completions.create(**kwargs) for c in (client, colocated)]
        assert answers[0].choices[0].message.content == answers[1].choices[0].message.content
        assert answers[0].usage == answers[1].usage


def test_32_concurrent_streams_all_finish_with_their_token_counts(served):
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[int, str | None, int]:
        stream = await client.completions.create(
            model=served.model, prompt=f"{PROMPTS[i % 3]} {i}", max_tokens=8 + i % 5, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
        finish, usage = None, None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                usage = chunk.usage
        return usage.completion_tokens, finish, 8 + i % 5

    async def main():
        async with openai.AsyncOpenAI(base_url=served.http_url, api_key=API_KEY, max_retries=0, timeout=180) as client:
            return await asyncio.gather(*(one(client, i) for i in range(32)), return_exceptions=True)

    results = asyncio.run(main())
    wrong = {i: r for i, r in enumerate(results) if isinstance(r, BaseException) or r[:2] != (r[2], "length")}
    assert not wrong, f"{len(wrong)} of 32 streams went wrong (got, finish, wanted): {wrong}"


def test_chat_with_an_image(client, served):
    from workers.engine.default_model import ensure_default_model
    from workers.vision.encoder import LlavaVisionFacts, has_vision_tower

    path = ensure_default_model()
    if not has_vision_tower(path):
        pytest.skip("the default model has no vision tower (a text-only Llama); image chats are refused with a 400 instead")
    tokens_per_image = LlavaVisionFacts.from_dir(path).num_image_tokens
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": png_data_url()}}]
    messages = [{"role": "user", "content": content}]
    out = client.chat.completions.create(model=served.model, messages=messages, max_tokens=8, temperature=0)
    text_only = client.chat.completions.create(
        model=served.model, messages=[{"role": "user", "content": "What is this?"}], max_tokens=1, temperature=0
    )
    # The image's one placeholder became `tokens_per_image` tokens (and a newline joins the parts).
    assert out.usage.prompt_tokens >= text_only.usage.prompt_tokens + tokens_per_image - 1
    assert out.usage.completion_tokens >= 1
    again = client.chat.completions.create(model=served.model, messages=messages, max_tokens=8, temperature=0)
    assert again.choices[0].message.content == out.choices[0].message.content  # greedy, the same image
    streamed = list(client.chat.completions.create(model=served.model, messages=messages, max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == out.choices[0].message.content


# -- bad input -------------------------------------------------------------------------------------
def png_data_url() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _chat_body(content) -> dict:
    return {"messages": [{"role": "user", "content": content}]}


BAD_REQUESTS = {
    # name: (path, body (bytes are sent as they are), expected status, expected param)
    "malformed JSON": ("/completions", b'{"model": "pavana-tiny", "prompt": ', 400, None),
    "not an object": ("/completions", b"[1, 2]", 400, None),
    "missing prompt": ("/completions", {"max_tokens": 3}, 400, "prompt"),
    "missing messages": ("/chat/completions", {}, 400, "messages"),
    "wrong-typed max_tokens": ("/completions", {"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens"),
    "wrong-typed messages": ("/chat/completions", {"messages": "hi"}, 400, "messages"),
    "unknown role": ("/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    "prompt over the context": ("/completions", {"prompt": [5] * 4096, "max_tokens": 1}, 400, "prompt"),
    "max_tokens over the context": ("/completions", {"prompt": "hi", "max_tokens": 100_000}, 400, "max_tokens"),
    "max_tokens 0": ("/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    "max_tokens negative": ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400, "max_tokens"),
    "max_completion_tokens 0": ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}, 400, "max_completion_tokens"),
    "n of 0": ("/completions", {"prompt": "hi", "n": 0}, 400, "n"),
    "an unknown field": ("/completions", {"prompt": "hi", "max_tokns": 3}, 400, "max_tokns"),
    "an OpenAI field Pavana lacks": ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "audio": {"voice": "x"}}, 400, "audio"),
    "an unknown field in a message": ("/chat/completions", {"messages": [{"role": "user", "content": "hi", "mood": "sad"}]}, 400, "messages[0].mood"),
    "token id out of the vocabulary": ("/completions", {"prompt": [1, 10**6]}, 400, "prompt"),
    "unknown model": ("/completions", {"model": "gpt-17", "prompt": "hi"}, 404, "model"),
    "corrupt image": ("/chat/completions", _chat_body([{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAA"}}]), 400, "messages[0].content[0].image_url"),
    "image bytes that are no image": ("/chat/completions", _chat_body([{"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"nope").decode()}}]), 400, "messages[0].content[0].image_url"),
    "remote image URL": ("/chat/completions", _chat_body([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]), 400, "messages[0].content[0].image_url"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_openai_error_bodies_and_the_cluster_keeps_serving(case, served, client):
    path, body, status, param = BAD_REQUESTS[case]
    if isinstance(body, dict):
        content = json.dumps({"model": served.model, **body}).encode()
    else:
        content = body
    response = httpx.post(
        served.http_url + path, content=content, timeout=60,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"]
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert_serving(client, served.model)


def test_remote_image_url_says_fetching_is_disabled(served):
    response = httpx.post(
        f"{served.http_url}/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60,
        json={"model": served.model, **_chat_body([{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}])},
    )
    assert response.status_code == 400 and "remote image URLs are disabled" in response.json()["error"]["message"]


def test_the_openai_client_sees_typed_errors(client, served):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=served.model, prompt="hi", max_tokens=0)
    assert info.value.body["param"] == "max_tokens"
    assert_serving(client, served.model)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "test-key"}], ids=["no key", "wrong key", "no scheme"])
def test_requests_without_a_valid_key_get_401(headers, served, client):
    for method, path, body in [("POST", "/completions", {"model": served.model, "prompt": "hi"}), ("GET", "/models", None)]:
        response = httpx.request(method, served.http_url + path, json=body, headers=headers, timeout=30)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.http_url, api_key="wrong-key", max_retries=0).models.list()
    assert_serving(client, served.model)
