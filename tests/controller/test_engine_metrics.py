"""The engines' own metrics on `/metrics`: a replica's heartbeat publishes its engine's text to the
real Redis, a scrape reads every live replica's and serves them beside Pavana's, each sample
labelled with its replica; a text that does not parse, or that tries to speak for Pavana, is
left out; an oversized text is refused."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.records import EngineMetrics, RecordError, TelemetrySnapshot, from_json, to_json
from cluster.spec import ClusterSpec
from cluster.telemetry import TelemetryStore
from controller.engine_metrics import engine_families
from controller.metrics import RequestMetrics
from workers.heartbeat import Heartbeat, TelemetrySettings

REDIS_URL = "redis://127.0.0.1:6379"

VLLM_TEXT = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 4.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 5.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 5.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.7
"""


def metrics(replica: str, text: str = VLLM_TEXT, site: str = "north") -> EngineMetrics:
    return EngineMetrics(pool="decode", site=site, replica_id=replica, text=text, timestamp_s=time.time())


def test_families_merge_replicas_and_label_each_sample():
    families = {f.name: f for f in engine_families([metrics("r1"), metrics("r2", site="south")])}
    running = families["vllm:num_requests_running"]
    assert sorted((s.labels["replica"], s.labels["site"], s.labels["pool"], s.value) for s in running.samples) == [
        ("r1", "north", "decode", 3.0), ("r2", "south", "decode", 3.0),
    ]
    ttft = families["vllm:time_to_first_token_seconds"]
    assert ttft.type == "histogram" and len(ttft.samples) == 8
    assert {s.labels["model_name"] for s in ttft.samples} == {"m"}  # the engine's own labels stay


def test_unparsable_text_and_pavana_names_are_left_out():
    spoof = "# TYPE pavana_requests counter\npavana_requests_total 1e9\n"
    families = engine_families([metrics("bad", "this is { not prometheus"), metrics("spoof", spoof), metrics("ok")])
    names = {f.name for f in families}
    assert names == {"vllm:num_requests_running", "vllm:time_to_first_token_seconds"}
    assert {s.labels["replica"] for f in families for s in f.samples} == {"ok"}


def test_the_record_round_trips_and_refuses_oversized_text():
    record = metrics("r1")
    assert from_json(to_json(record)) == record
    with pytest.raises(RecordError, match="limit"):
        metrics("r1", "x" * (600 * 1024))


def test_exposition_serves_engines_beside_pavana_and_prometheus_reads_it():
    spec = ClusterSpec.parse({"pools": {"prefill": {}, "decode": {}}, "sites": [{"name": "north"}]})
    text = RequestMetrics(spec).exposition(TelemetrySnapshot(taken_at_s=time.time()), None, time.time(), [metrics("r1")]).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "pavana_replicas" in names and "vllm:num_requests_running" in names
    assert 'vllm:num_requests_running{engine="0",model_name="m",pool="decode",replica="r1",site="north"} 3.0' in text


@pytest.mark.redis
async def test_a_heartbeat_publishes_its_engine_metrics_and_the_store_reads_the_live_ones():
    prefix = f"test:{uuid.uuid4().hex}:"
    settings = TelemetrySettings(redis_url=REDIS_URL, prefix=prefix, period_s=0.2)
    beats = [
        Heartbeat(settings, pool="decode", stage="decode", site="north", replica_id=f"r{i}", stats=lambda: {}, engine_metrics=lambda: VLLM_TEXT)
        for i in range(2)
    ]
    silent = Heartbeat(settings, pool="decode", stage="decode", site="north", replica_id="quiet", stats=lambda: {}, engine_metrics=lambda: "")
    reader = TelemetryStore(REDIS_URL, prefix)
    try:
        for hb in [*beats, silent]:
            hb.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(await reader.engine_metrics()) < 2:
            await asyncio.sleep(0.1)
        found = await reader.engine_metrics()
        assert sorted(m.replica_id for m in found) == ["r0", "r1"]  # nothing for an engine without metrics
        assert all(m.text == VLLM_TEXT for m in found)
    finally:
        for hb in [*beats, silent]:
            await hb.stop()
        await reader.clear()
        await reader.close()
