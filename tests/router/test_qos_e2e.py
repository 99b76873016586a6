"""QoS classes end to end on the real local Ray cluster with the real `openai` client: a key
bound to the batch class is refused with 429 and Retry-After while the ingress is loaded, the
interactive class is still admitted, a request cannot promote its key's class, and every slot
is given back once the load is gone."""

from __future__ import annotations

import asyncio
import uuid

import openai
import pytest

from cluster.spec import ClusterSpec

pytestmark = pytest.mark.ray
APP = "qos-test"
PREFIX = "/qos"
INTERACTIVE_KEY, BATCH_KEY = "interactive-key", "batch-key"


@pytest.fixture(scope="module")
def base_url(ray_cluster):
    from ray import serve

    from controller.app import build_app
    from tests.router.conftest import router_test_spec

    raw = router_test_spec(ClusterSpec.default(), ray_cluster).model_dump(mode="json")
    raw.update(
        telemetry_prefix=f"test:{uuid.uuid4().hex}",
        api_keys=[INTERACTIVE_KEY, BATCH_KEY],
        api_key_classes={BATCH_KEY: "batch"},
        max_in_flight=4,  # batch admitted below 2 in flight (70 %), standard below 3, interactive below 4
    )
    spec = ClusterSpec.model_validate(raw)
    serve.run(build_app(spec), name=APP, route_prefix=PREFIX)
    try:
        yield f"http://127.0.0.1:{ray_cluster.http_port}{PREFIX}/v1", spec.model.name
    finally:
        serve.delete(APP)


def client(base: str, key: str, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0, timeout=120, default_headers=headers)


async def test_batch_is_refused_under_load_while_interactive_is_admitted(base_url):
    base, model = base_url
    interactive, batch = client(base, INTERACTIVE_KEY), client(base, BATCH_KEY)
    # Two long interactive streams hold two slots: batch's ceiling is reached.
    streams = [
        await interactive.completions.create(model=model, prompt="Hold the line", max_tokens=64, stream=True, extra_body={"ignore_eos": True})
        for _ in range(2)
    ]
    firsts = [await anext(aiter(s)) for s in streams]
    assert all(f.id for f in firsts)
    with pytest.raises(openai.RateLimitError) as refused:
        await batch.completions.create(model=model, prompt="Bulk work", max_tokens=2)
    assert refused.value.status_code == 429
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert "'batch' requests are admitted while fewer than 2" in refused.value.message
    # The interactive class still has headroom.
    done = await interactive.completions.create(model=model, prompt="Urgent", max_tokens=2)
    assert done.usage.completion_tokens >= 1
    for s in streams:
        async for _ in s:
            pass
    # Load gone: batch is admitted again (every slot was released).
    later = await batch.completions.create(model=model, prompt="Bulk work", max_tokens=2)
    assert later.usage.completion_tokens >= 1


async def test_a_request_may_demote_itself_but_not_promote_its_key(base_url):
    base, model = base_url
    demoted = client(base, INTERACTIVE_KEY, **{"x-pavana-qos-class": "batch"})
    assert (await demoted.completions.create(model=model, prompt="Later is fine", max_tokens=2)).usage.completion_tokens >= 1
    promoted = client(base, BATCH_KEY, **{"x-pavana-qos-class": "interactive"})
    with pytest.raises(openai.BadRequestError) as refused:
        await promoted.completions.create(model=model, prompt="Me first", max_tokens=2)
    assert "more important than 'batch'" in refused.value.message
    unknown = client(base, INTERACTIVE_KEY, **{"x-pavana-qos-class": "gold"})
    with pytest.raises(openai.BadRequestError, match="unknown QoS class"):
        await unknown.completions.create(model=model, prompt="Hi", max_tokens=2)
