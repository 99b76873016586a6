"""One control round (`autoscaler.round.plan_round`) on hand-built observations: every kind of
decision it makes, the memory it hands on, and the inputs it measures."""

from __future__ import annotations

from dataclasses import replace

import pytest

from autoscaler.round import Observation, RoundMemory, plan_round, settings_from_spec
from cluster.records import ReplicaHeartbeat, RequestRecord, TelemetrySnapshot
from cluster.spec import ClusterSpec

MODES = [{"name": "full", "power_w": 300.0}, {"name": "capped", "power_w": 180.0, "throughput_fraction": 0.7}]


def two_sites(**pool) -> ClusterSpec:
    site = {"power_modes": MODES, "max_replicas": 4}
    return ClusterSpec.parse({
        "topology": "colocated",
        "pools": {"colocated": {"min_replicas": 0, "max_replicas": 4, "initial_replicas": 1, **pool}},
        "sites": [{"name": "a", **site}, {"name": "b", "latency_ms": 5.0, **site}],
    })


def heartbeat(site: str, replica: str, now: float, *, queued: int = 0, tokens_per_s: float = 0.0, busy: float = 0.0,
              mode: str = "", stage: str = "colocated", images_per_s: float = 0.0, prefill_rate: float = 0.0,
              decode_rate: float = 0.0) -> ReplicaHeartbeat:
    return ReplicaHeartbeat(
        pool=stage, stage=stage, site=site, replica_id=replica, queued_requests=0, running_requests=1,
        queued_prefill_tokens=queued, free_kv_blocks=100, total_kv_blocks=128, tokens_per_s=tokens_per_s,
        busy_fraction=busy, power_w=300.0, timestamp_s=now, power_mode=mode, images_per_s=images_per_s,
        prefill_tokens_per_busy_s=prefill_rate, decode_tokens_per_busy_s=decode_rate,
    )


def requests(now: float, n: int, site: str = "a") -> tuple[RequestRecord, ...]:
    return tuple(
        RequestRecord(f"r{i}", "interactive", site, "colocated", 0.2, 0.02, 0.05, 200, 200, "ok", now - i * 0.1)
        for i in range(n)
    )


def observe(now: float, *, heartbeats=(), records=(), current=None, power=None, stale=False) -> Observation:
    snapshot = TelemetrySnapshot(tuple(heartbeats), tuple(records), taken_at_s=now, stale=stale, age_s=3.0 if stale else 0.0)
    return Observation(now, snapshot, current or {"colocated@a": 1, "colocated@b": 1}, power or {"a": 1200.0, "b": 1200.0})


def test_a_pool_with_a_long_queue_grows_and_the_change_is_remembered():
    settings = settings_from_spec(two_sites())
    now = 100.0
    result = plan_round(observe(now, heartbeats=[heartbeat("a", "r1", now, queued=20_000, tokens_per_s=1000, busy=1.0),
                                                 heartbeat("b", "r1", now, busy=0.6, tokens_per_s=600)]),
                        RoundMemory(), settings)
    up = {d.target: d for d in result.decisions if d.kind == "scale_up"}
    assert set(up) == {"colocated@a"} and up["colocated@a"].after > 1
    assert "proactive" in up["colocated@a"].reason
    assert result.memory.last_change_s == {"colocated@a": now}


def test_cool_downs_hold_from_the_first_round_so_nothing_shrinks_for_want_of_telemetry():
    settings = settings_from_spec(two_sites(), autoscaler={"cooldown_s": 60.0})
    idle = [heartbeat("a", "r1", 0.0), heartbeat("b", "r1", 0.0)]
    first = plan_round(observe(0.0, heartbeats=idle), RoundMemory(), settings)
    assert not [d for d in first.decisions if d.kind == "scale_down"]
    assert "cool-down" in first.plan.target("colocated@a").reason
    idle = [replace(h, timestamp_s=61.0) for h in idle]
    later = plan_round(observe(61.0, heartbeats=idle), first.memory, settings)
    assert {d.target for d in later.decisions if d.kind == "scale_down"} == {"colocated@a", "colocated@b"}


def test_stale_telemetry_changes_nothing_and_does_not_replan():
    settings = settings_from_spec(two_sites())
    result = plan_round(observe(10.0, heartbeats=[heartbeat("a", "r1", 10.0, queued=50_000, busy=1.0, tokens_per_s=900)],
                                stale=True), RoundMemory(), settings)
    assert result.decisions == () and result.routing is None and result.replanned is None
    assert all("stale" in t.reason for t in result.plan.targets)


def test_a_site_without_power_goes_dark_and_its_traffic_moves():
    settings = settings_from_spec(two_sites())
    now = 50.0
    beats = [heartbeat("a", "r1", now, busy=0.6, tokens_per_s=600), heartbeat("b", "r1", now, busy=0.6, tokens_per_s=600)]
    first = plan_round(observe(now, heartbeats=beats, records=requests(now, 60)), RoundMemory(), settings)
    assert first.replanned == "no plan yet"
    assert first.routing.shares["interactive"]["a"] > 0

    later = now + 5
    beats = [replace(h, timestamp_s=later) for h in beats]
    dropped = plan_round(observe(later, heartbeats=beats, records=requests(later, 60), power={"a": 0.0, "b": 1200.0}),
                         first.memory, settings)
    assert "site a power fell to 0 W" in dropped.replanned
    assert dropped.routing.shares["interactive"] == {"a": 0.0, "b": 1.0}
    down = dropped.plan.target("colocated@a")
    assert down.desired == 0 and "power cap" in down.reason
    kinds = {(d.kind, d.target) for d in dropped.decisions}
    assert ("scale_down", "colocated@a") in kinds
    assert ("reroute", "interactive@a") in kinds and ("reroute", "interactive@b") in kinds


def test_less_power_puts_replicas_in_the_capped_mode_ranked_as_replicas_rank_themselves():
    settings = settings_from_spec(two_sites(initial_replicas=3))
    now = 10.0
    beats = [heartbeat("a", f"r{i}", now, busy=0.7, tokens_per_s=700) for i in range(3)]
    beats += [heartbeat("b", "r0", now, busy=0.7, tokens_per_s=700)]
    current = {"colocated@a": 3, "colocated@b": 1}
    first = plan_round(observe(now, heartbeats=beats, current=current), RoundMemory(), settings)
    assert set(first.replica_modes.values()) == {"full"}

    # 700 W afford one full and two capped replicas (660 W) rather than two full ones.
    later = plan_round(observe(now + 5, heartbeats=[replace(h, timestamp_s=now + 5) for h in beats], current=current,
                               power={"a": 700.0, "b": 1200.0}), first.memory, settings)
    assert later.routing.modes["a"] == {"full": 1, "capped": 2}
    modes_at_a = {rid: m for rid, m in later.replica_modes.items() if "@a:" in rid}
    assert modes_at_a == {"colocated@a:r0": "full", "colocated@a:r1": "capped", "colocated@a:r2": "capped"}
    (mode_change,) = [d for d in later.decisions if d.kind == "power_mode"]
    assert (mode_change.target, mode_change.before, mode_change.after) == ("a", 0, 2)


def test_the_routing_plan_is_kept_until_the_interval_is_up():
    settings = settings_from_spec(two_sites(), planner={"interval_s": 30.0})
    first = plan_round(observe(0.0), RoundMemory(), settings)
    kept = plan_round(observe(10.0), first.memory, settings)
    assert kept.replanned is None and kept.routing == first.routing
    assert not [d for d in kept.decisions if d.kind in ("reroute", "power_mode")]
    again = plan_round(observe(31.0), kept.memory, settings)
    assert again.replanned.startswith("planning interval")
    assert again.memory.power_history["a"] == (1200.0, 1200.0, 1200.0)


def test_measured_throughput_replaces_the_profiled_default_counted_at_full_clock():
    settings = settings_from_spec(two_sites())
    now = 5.0
    cold = plan_round(observe(now), RoundMemory(), settings)
    assert cold.measured.prefill_tokens_per_s is None and cold.measured.decode_tokens_per_s is None
    assert "prefill tokens/s (profiled)" in cold.measured.describe(settings)
    # 7,000 prefill tokens per second of prefilling in the capped mode (70% clock) is 10,000 at full clock.
    beats = [heartbeat("a", "r1", now, busy=0.5, mode="capped", prefill_rate=7000, decode_rate=350)]
    warm = plan_round(observe(now, heartbeats=beats), RoundMemory(), settings)
    assert warm.measured.prefill_tokens_per_s == pytest.approx(10_000.0)
    assert warm.measured.decode_tokens_per_s == pytest.approx(500.0)


def test_demand_is_costed_with_the_measured_throughput():
    settings = settings_from_spec(two_sites(), planner={"prefill_tokens_per_s": 400.0, "decode_tokens_per_s": 400.0})
    now = 5.0
    records = requests(now, 300)  # 10 requests/s of 200 prompt and 200 output tokens each
    # At the profiled 400 tokens/s one request costs 1 replica-second: 10 replicas of work, more
    # than the two sites' 8 can serve. Measured at 4,000 tokens/s it costs 0.1: all of it fits.
    profiled = plan_round(observe(now, records=records), RoundMemory(), settings)
    beats = [heartbeat(s, "r1", now, busy=0.5, prefill_rate=4000, decode_rate=4000) for s in ("a", "b")]
    measured = plan_round(observe(now, heartbeats=beats, records=records), RoundMemory(), settings)
    assert profiled.routing.goodput_rps == pytest.approx(8.0)
    assert measured.routing.goodput_rps == pytest.approx(10.0)


def test_seconds_per_image_are_measured_from_vision_heartbeats():
    spec = ClusterSpec.parse({"topology": "disaggregated"})
    settings = settings_from_spec(spec, autoscaler={"encode_s_per_image": 0.05})
    now = 5.0
    vision = heartbeat("local", "v1", now, stage="vision", busy=0.8, images_per_s=4.0)
    result = plan_round(observe(now, heartbeats=[vision], current={"vision@local": 1, "prefill@local": 1, "decode@local": 1},
                                power={}), RoundMemory(), settings)
    assert result.measured.encode_s_per_image == pytest.approx(0.2)
    assert "0.200 s to encode each" in result.plan.target("vision@local").reason


def test_autoscaling_off_holds_every_pool():
    settings = settings_from_spec(two_sites(), autoscale=False)
    result = plan_round(observe(1.0, heartbeats=[heartbeat("a", "r1", 1.0, queued=90_000, busy=1.0, tokens_per_s=500)]),
                        RoundMemory(), settings)
    assert not [d for d in result.decisions if d.kind.startswith("scale")]
