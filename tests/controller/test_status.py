"""`pavana status` shows the running cluster's run alone, with the age of what it shows.

Against the real Redis, each test under its own base prefix: two runs of one cluster write
decisions and requests; status reads only the newer run's, names the run and puts an age on
every decision."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis
from rich.console import Console

from cluster.records import Decision, RequestRecord
from cluster.spec import ClusterSpec
from cluster.telemetry import EARLIER_RUNS_TTL_S, TelemetryStore, run_prefix
from controller.status import age, read_status, render
from controller.up import with_run_scope

pytestmark = pytest.mark.redis
URL = "redis://127.0.0.1:6379"


@pytest.fixture
def spec():
    base = f"test-status:{uuid.uuid4().hex}"
    yield ClusterSpec.default().model_copy(update={"telemetry_prefix": base, "redis_url": URL})

    async def clean():
        client = Redis.from_url(URL, decode_responses=True)
        keys = [k async for k in client.scan_iter(match=base + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()

    asyncio.run(clean())


async def _write(spec, *records) -> None:
    store = TelemetryStore.from_spec(spec)
    try:
        await store.write_batch(records)
    finally:
        await store.close()


def _decision(target: str, after: int, at_s: float) -> Decision:
    return Decision(kind="scale_up", target=target, before=1, after=after, reason="queue", timestamp_s=at_s)


def _request(request_id: str, at_s: float) -> RequestRecord:
    return RequestRecord(
        request_id=request_id, qos_class="interactive", site="local", pool_path="colocated", ttft_s=0.1, tbt_p50_s=0.01,
        tbt_p99_s=0.02, prompt_tokens=8, output_tokens=4, outcome="ok", timestamp_s=at_s,
    )


def test_status_shows_only_the_newest_run_of_the_cluster(spec):
    first = with_run_scope(spec, now_s=1_000.0)
    asyncio.run(_write(first, _decision("decode@local", 4, 1_010.0), _request("old", 1_010.0)))
    second = with_run_scope(spec, now_s=2_000.0)
    assert first.telemetry_prefix != second.telemetry_prefix
    assert second.telemetry_prefix.startswith(spec.telemetry_prefix + ":run:")
    asyncio.run(_write(second, _decision("prefill@local", 2, 2_030.0), _request("new", 2_030.0)))

    snapshot, _, decisions, run = asyncio.run(read_status(spec))

    assert run_prefix(spec.telemetry_prefix, run.run_id) == second.telemetry_prefix
    assert run.started_s == 2_000.0
    assert [d.target for d in decisions] == ["prefill@local"]
    assert [r.request_id for r in snapshot.requests] == ["new"]


def test_an_earlier_runs_keys_are_left_to_expire(spec):
    first = with_run_scope(spec, now_s=1_000.0)
    asyncio.run(_write(first, _decision("decode@local", 4, 1_010.0)))
    with_run_scope(spec, now_s=2_000.0)

    async def ttl() -> int:
        client = Redis.from_url(URL, decode_responses=True)
        try:
            return await client.ttl(first.telemetry_prefix + ":decisions")
        finally:
            await client.aclose()

    assert 0 < asyncio.run(ttl()) <= EARLIER_RUNS_TTL_S


def test_a_cluster_not_started_by_pavana_up_is_read_under_the_specs_own_prefix(spec):
    asyncio.run(_write(spec, _decision("decode@local", 3, 500.0)))
    _, _, decisions, run = asyncio.run(read_status(spec))
    assert run.run_id is None
    assert [d.after for d in decisions] == [3]


def test_every_decision_and_the_run_carry_their_age(spec):
    scoped = with_run_scope(spec, now_s=1_000.0)
    asyncio.run(_write(scoped, _decision("decode@local", 4, 1_100.0), _request("r", 1_150.0)))
    snapshot, plan, decisions, run = asyncio.run(read_status(spec))
    console = Console(record=True, width=200)
    render(spec, snapshot, plan, decisions, run, console, now_s=1_400.0)
    text = " ".join(console.export_text().split())  # titles wrap over narrow tables
    assert f"Run {run.run_id}, started 7 min ago" in text
    assert "5 min ago" in text  # the decision, at 1,100 s
    assert "the oldest 4 min ago" in text  # the request, at 1,150 s


@pytest.mark.parametrize(("seconds", "text"), [(5, "5 s ago"), (119, "119 s ago"), (600, "10 min ago"), (36_000, "10 h ago"), (-3, "0 s ago")])
def test_age_reads_naturally(seconds, text):
    assert age(seconds) == text
