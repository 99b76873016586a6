"""Telemetry records survive JSON, and a reader refuses what it cannot understand."""

from __future__ import annotations

import json
import math

import pytest

from cluster.records import (
    SCHEMA_VERSION,
    Decision,
    Plan,
    PoolTarget,
    RecordError,
    ReplicaHeartbeat,
    RequestRecord,
    SchemaVersionError,
    SitePower,
    from_json,
    to_json,
)

HEARTBEAT = ReplicaHeartbeat(
    pool="prefill", stage="prefill", site="site-a", replica_id="r1", queued_requests=2, running_requests=3,
    queued_prefill_tokens=900, free_kv_blocks=25, total_kv_blocks=100, tokens_per_s=1500.5,
    busy_fraction=0.75, power_w=310.0, timestamp_s=1_700_000_000.25,
)
REQUEST = RequestRecord(
    request_id="req-1", qos_class="interactive", site="site-a", pool_path="vision>prefill>decode",
    ttft_s=0.42, tbt_p50_s=0.03, tbt_p99_s=0.09, prompt_tokens=812, output_tokens=64, outcome="ok",
    timestamp_s=1_700_000_001.0, num_images=3,
)
REJECTED = RequestRecord(
    request_id="req-2", qos_class="batch", site="site-b", pool_path="", ttft_s=None, tbt_p50_s=None,
    tbt_p99_s=None, prompt_tokens=10, output_tokens=0, outcome="rejected", timestamp_s=5.0,
)
POWER = SitePower(site="site-a", available_w=12_500.0, timestamp_s=7.0, source="trace:wind.csv")
DECISION = Decision(kind="scale_up", target="prefill@site-a", before=1, after=3, reason="queue", timestamp_s=8.0)
PLAN = Plan(
    targets=(PoolTarget("prefill", "site-a", 1, 3, "queue"), PoolTarget("decode", "site-a", 2, 2, "hold")),
    timestamp_s=9.0,
)


@pytest.mark.parametrize("record", [HEARTBEAT, REQUEST, REJECTED, POWER, DECISION, PLAN], ids=type)
def test_round_trip(record):
    text = to_json(record)
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION
    assert from_json(text) == record
    assert from_json(text.encode(), type(record)) == record


def test_derived_fields():
    assert HEARTBEAT.pool_key == "prefill@site-a"
    assert HEARTBEAT.kv_occupancy == pytest.approx(0.75)
    assert REQUEST.stages == ("vision", "prefill", "decode")
    assert REJECTED.stages == ()
    assert PLAN.desired == {"prefill@site-a": 3, "decode@site-a": 2}
    assert PLAN.changes() == (
        Decision(kind="scale_up", target="prefill@site-a", before=1, after=3, reason="queue", timestamp_s=9.0),
    )


@pytest.mark.parametrize("version", [0, SCHEMA_VERSION + 1, "1", None])
def test_unknown_schema_version_is_rejected(version):
    envelope = json.loads(to_json(HEARTBEAT))
    envelope["schema_version"] = version
    with pytest.raises(SchemaVersionError, match=f"reads only version {SCHEMA_VERSION}"):
        from_json(json.dumps(envelope))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda e: e["data"].pop("site"), "request record: site: Field required"),
        (lambda e: e["data"].update(outcome="lost"), "outcome: Input should be"),
        (lambda e: e["data"].update(gpu="h100"), "gpu: Unexpected keyword argument"),
        (lambda e: e.update(record="gossip"), "unknown type 'gossip'"),
    ],
)
def test_malformed_records_name_the_field(mutate, message):
    envelope = json.loads(to_json(REQUEST))
    mutate(envelope)
    with pytest.raises(RecordError, match=message):
        from_json(json.dumps(envelope))


def test_wrong_expected_type_and_garbage():
    with pytest.raises(RecordError, match="expected 'plan', got 'heartbeat'"):
        from_json(to_json(HEARTBEAT), Plan)
    with pytest.raises(RecordError, match="not JSON"):
        from_json(b"\x80\x04pickle")
    with pytest.raises(RecordError, match="schema_version, record and data"):
        from_json("[1, 2]")


def test_non_finite_numbers_are_refused_on_write():
    with pytest.raises(RecordError, match="tokens_per_s: must be a finite number"):
        to_json(ReplicaHeartbeat(**{**_fields(HEARTBEAT), "tokens_per_s": math.nan}))
    with pytest.raises(RecordError, match="plan"):
        to_json(Plan(targets=(), timestamp_s=math.inf))


def _fields(record) -> dict:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}
