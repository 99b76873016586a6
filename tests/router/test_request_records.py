"""The router's request records reach Redis: one per request, with its timings and outcome."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from cluster.telemetry import TelemetryStore
from tests.router.conftest import API_KEY, Served

pytestmark = [pytest.mark.ray, pytest.mark.redis]


def records(spec) -> list:
    async def read():
        store = TelemetryStore.from_spec(spec)
        try:
            return list((await store.snapshot()).requests)
        finally:
            await store.close()

    return asyncio.run(read())


def test_each_request_leaves_a_record_with_timings(served: Served):
    client = openai.OpenAI(base_url=served.http_url, api_key=API_KEY, max_retries=0, timeout=120)
    marker = f"records test {time.time()}"
    stream = client.completions.create(model=served.model, prompt=marker, max_tokens=6, temperature=0, stream=True)
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert isinstance(text, str)
    for _ in range(50):
        mine = [r for r in records(served.spec) if r.output_tokens == 6 and r.outcome == "ok"]
        if mine:
            break
        time.sleep(0.2)
    assert mine, "no request record reached Redis"
    record = mine[-1]
    assert record.pool_path == "prefill>decode" and record.site == "local" and record.qos_class == "interactive"
    assert record.ttft_s is not None and record.ttft_s > 0
    assert record.tbt_p50_s is not None and record.tbt_p99_s >= record.tbt_p50_s
    assert record.prompt_tokens > 0 and record.num_images == 0


def test_a_records_user_and_a_priority_that_demotes(served: Served):
    """`user` is recorded with the request; vLLM's `priority` 2 runs it as `batch` (router/priority.py)."""
    client = openai.OpenAI(base_url=served.http_url, api_key=API_KEY, max_retries=0, timeout=120)
    user = f"user-{time.time()}"
    out = client.chat.completions.create(
        model=served.model, messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0, n=2, user=user,
        extra_body={"priority": 2},
    )
    assert len(out.choices) == 2
    for _ in range(50):
        mine = [r for r in records(served.spec) if r.user == user]
        if len(mine) == 2:
            break
        time.sleep(0.2)
    assert len(mine) == 2, "a record per choice, each with the user"
    assert {r.qos_class for r in mine} == {"batch"} and {r.request_id.rsplit("-", 1)[1] for r in mine} == {"0", "1"}
