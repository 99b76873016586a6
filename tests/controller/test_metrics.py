"""Prometheus metrics on hand-built snapshots and requests: exactly Pavana's names, the values
and labels the telemetry says, label values escaped and read back intact by Prometheus's own
parser, and per-request counters and histograms."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.records import Plan, PoolTarget, ReplicaHeartbeat, RequestRecord, SitePower, TelemetrySnapshot
from cluster.spec import ClusterSpec
from controller.metrics import RequestMetrics, telemetry_families

NOW = 1_800_000_000.0
ODD_CLASS = 'say "hi"\\back\nslash'  # a class name with every character the text format escapes

NAMES = {
    "pavana_requests", "pavana_request_latency_seconds", "pavana_ttft_seconds", "pavana_tbt_seconds",
    "pavana_queued_requests", "pavana_queued_prefill_tokens", "pavana_kv_occupancy_ratio", "pavana_tokens_per_second",
    "pavana_replicas", "pavana_site_power_watts", "pavana_slo_attainment_ratio",
}


def spec() -> ClusterSpec:
    return ClusterSpec.parse({
        "pools": {"prefill": {}, "decode": {}},
        "sites": [{"name": "north"}, {"name": "south"}],
        "qos_classes": [{"name": "interactive", "slo": {"ttft_s": 0.5, "tbt_s": 0.1}}, {"name": ODD_CLASS}],
        "default_qos_class": "interactive",
    })


def beat(pool: str, site: str, replica: str, **load) -> ReplicaHeartbeat:
    fields = dict(queued_requests=0, running_requests=0, queued_prefill_tokens=0, free_kv_blocks=100, total_kv_blocks=100,
                  tokens_per_s=0.0, busy_fraction=0.0, power_w=300.0)
    fields.update(load)
    return ReplicaHeartbeat(pool=pool, stage=pool, site=site, replica_id=replica, timestamp_s=NOW, **fields)


def record(qos: str, *, ttft: float | None = 0.2, outcome: str = "ok", site: str = "north", tbt_p99: float = 0.05) -> RequestRecord:
    return RequestRecord(
        request_id=f"{qos}-{ttft}-{outcome}", qos_class=qos, site=site, pool_path="prefill>decode", ttft_s=ttft,
        tbt_p50_s=0.01 if ttft is not None else None, tbt_p99_s=tbt_p99 if ttft is not None else None,
        prompt_tokens=10, output_tokens=4, outcome=outcome, timestamp_s=NOW - 1,
    )


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_gauges_from_a_snapshot_and_a_plan():
    snapshot = TelemetrySnapshot(
        heartbeats=(
            beat("prefill", "north", "a", queued_requests=3, queued_prefill_tokens=900, free_kv_blocks=25, tokens_per_s=40.0, power_w=280.0),
            beat("prefill", "north", "b", queued_requests=2, queued_prefill_tokens=100, free_kv_blocks=75, tokens_per_s=60.0, power_w=300.0),
            beat("decode", "north", "c", free_kv_blocks=10, tokens_per_s=120.0, power_w=310.0),
        ),
        requests=(record("interactive", ttft=0.2), record("interactive", ttft=0.9), record("interactive", ttft=0.1, tbt_p99=0.5)),
        site_power={"north": SitePower("north", 2000.0, NOW, "constant")},
        taken_at_s=NOW,
    )
    plan = Plan(targets=(PoolTarget("prefill", "north", 2, 3, "queue"), PoolTarget("decode", "north", 1, 1, "hold")), timestamp_s=NOW)
    families = {f.name: f for f in telemetry_families(snapshot, plan, spec(), NOW)}
    value = {
        (f.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    north = (("pool", "prefill"), ("site", "north"))
    assert value[("pavana_queued_requests", north)] == 5
    assert value[("pavana_queued_prefill_tokens", north)] == 1000
    assert value[("pavana_kv_occupancy_ratio", north)] == pytest.approx(100 / 200)
    assert value[("pavana_tokens_per_second", north)] == 100.0
    assert value[("pavana_replicas", (*north, ("state", "running")))] == 2
    assert value[("pavana_replicas", (*north, ("state", "desired")))] == 3
    south = (("pool", "prefill"), ("site", "south"))
    assert value[("pavana_replicas", (*south, ("state", "running")))] == 0
    assert ("pavana_replicas", (*south, ("state", "desired"))) not in value  # the plan does not name it
    assert ("pavana_kv_occupancy_ratio", south) not in value  # nothing reported
    assert value[("pavana_site_power_watts", (("kind", "available"), ("site", "north")))] == 2000.0
    assert value[("pavana_site_power_watts", (("kind", "drawn"), ("site", "north")))] == 890.0
    assert ("pavana_site_power_watts", (("kind", "available"), ("site", "south"))) not in value
    assert value[("pavana_slo_attainment_ratio", (("qos_class", "interactive"),))] == pytest.approx(1 / 3)
    assert ("pavana_slo_attainment_ratio", (("qos_class", ODD_CLASS),)) not in value  # no requests: no ratio
    assert all(f.type == "gauge" for f in families.values())


def test_exposition_has_exactly_pavanas_names_and_escapes_labels():
    metrics = RequestMetrics(spec())
    metrics.observe(record(ODD_CLASS, ttft=0.3), 1.25, [0.01, 0.02, 0.2])
    metrics.observe(record(ODD_CLASS, ttft=None, outcome="error"), 0.05, [])
    metrics.observe(record("interactive", ttft=0.04, site="south"), 0.4, [0.03])
    snapshot = TelemetrySnapshot(heartbeats=(beat("decode", "north", "c"),), requests=(record(ODD_CLASS),), taken_at_s=NOW)
    text = metrics.exposition(snapshot, None, NOW).decode()
    assert '\\"hi\\"\\\\back\\nslash' in text  # escaped on the wire ...
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == NAMES
    assert "_created" not in text
    got = samples(text)
    labels = {"qos_class": ODD_CLASS, "site": "north", "pool_path": "prefill>decode"}
    assert got[("pavana_requests_total", frozenset({**labels, "outcome": "ok"}.items()))] == 1  # ... and intact once read
    assert got[("pavana_requests_total", frozenset({**labels, "outcome": "error"}.items()))] == 1
    odd = frozenset({"qos_class": ODD_CLASS}.items())
    assert got[("pavana_request_latency_seconds_count", odd)] == 2
    assert got[("pavana_request_latency_seconds_sum", odd)] == pytest.approx(1.30)
    odd_north = frozenset({"qos_class": ODD_CLASS, "site": "north"}.items())
    assert got[("pavana_ttft_seconds_count", odd_north)] == 1  # the failed request had no first token
    assert got[("pavana_tbt_seconds_count", odd_north)] == 3  # every gap, not one summary per request
    assert got[("pavana_tbt_seconds_bucket", odd_north | {("le", "0.025")})] == 2
    assert got[("pavana_tbt_seconds_bucket", odd_north | {("le", "+Inf")})] == 3
    assert got[("pavana_ttft_seconds_count", frozenset({"qos_class": "interactive", "site": "south"}.items()))] == 1
    assert got[("pavana_replicas", frozenset({"pool": "decode", "site": "north", "state": "running"}.items()))] == 1
    assert families["pavana_requests"].type == "counter"
    assert {families[n].type for n in ("pavana_request_latency_seconds", "pavana_ttft_seconds", "pavana_tbt_seconds")} == {"histogram"}


def test_gauges_follow_each_scrape():
    """The collector shows the snapshot of this scrape, not the first one it saw."""
    metrics = RequestMetrics(spec())
    key = ("pavana_queued_requests", frozenset({"pool": "prefill", "site": "north"}.items()))
    first = samples(metrics.exposition(TelemetrySnapshot(heartbeats=(beat("prefill", "north", "a", queued_requests=7),)), None, NOW).decode())
    second = samples(metrics.exposition(TelemetrySnapshot(heartbeats=(beat("prefill", "north", "a", queued_requests=2),)), None, NOW).decode())
    assert (first[key], second[key]) == (7, 2)


async def test_a_request_stream_feeds_the_counters_as_it_ends():
    """`measured` hands every finished stream to the metrics: its outcome, its end-to-end time
    and each gap between tokens, as they happened (a stream that fails counts as an error)."""
    import asyncio

    from router.request_telemetry import measured
    from workers.requests import TokenChunk

    async def tokens(n: int, gap_s: float, fail: bool = False):
        for i in range(n):
            await asyncio.sleep(gap_s)
            yield TokenChunk("r", [i], "x", finished=i == n - 1 and not fail)
        if fail:
            raise RuntimeError("replica lost")

    metrics, published = RequestMetrics(spec()), []
    common = dict(qos_class="interactive", site="north", pool_path="colocated", prompt_tokens=3, num_images=0, observe=metrics.observe)
    assert len([c async for c in measured(tokens(5, 0.02), published.append, request_id="a", **common)]) == 5
    with pytest.raises(RuntimeError):
        async for _ in measured(tokens(2, 0.0, fail=True), published.append, request_id="b", **common):
            pass
    got = samples(metrics.exposition(TelemetrySnapshot(), None, NOW).decode())
    outcome = {"qos_class": "interactive", "site": "north", "pool_path": "colocated"}
    assert got[("pavana_requests_total", frozenset({**outcome, "outcome": "ok"}.items()))] == 1
    assert got[("pavana_requests_total", frozenset({**outcome, "outcome": "error"}.items()))] == 1
    where = frozenset({"qos_class": "interactive", "site": "north"}.items())
    assert got[("pavana_tbt_seconds_count", where)] == 4 + 1  # gaps between 5 tokens, and between 2
    assert got[("pavana_tbt_seconds_sum", where)] >= 4 * 0.02
    latency = frozenset({"qos_class": "interactive"}.items())
    assert got[("pavana_request_latency_seconds_sum", latency)] >= 5 * 0.02
    assert [r.outcome for r in published] == ["ok", "error"]  # the records still go to telemetry


def test_a_refused_request_is_counted_without_a_latency():
    metrics = RequestMetrics(spec())
    refused = RequestRecord(
        request_id="x", qos_class="interactive", site="", pool_path="", ttft_s=None, tbt_p50_s=None, tbt_p99_s=None,
        prompt_tokens=3, output_tokens=0, outcome="rejected", timestamp_s=NOW,
    )
    metrics.count(refused)
    metrics.count(refused)
    got = samples(metrics.exposition(TelemetrySnapshot(), None, NOW).decode())
    labels = {"qos_class": "interactive", "site": "", "pool_path": "", "outcome": "rejected"}
    assert got[("pavana_requests_total", frozenset(labels.items()))] == 2
    assert not any(name.startswith("pavana_request_latency_seconds") for name, _ in got)
