"""The per-pool autoscaler on hand-built snapshots: each stage's rule, proactive and reactive
terms, bounds, cool-down and hysteresis, stale data. Desired counts are exact."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from autoscaler.config import AutoscalerConfig, AutoscalerConfigError, ClassSLO, PoolConfig, from_spec
from autoscaler.policy import plan
from cluster.records import ReplicaHeartbeat, RequestRecord, TelemetrySnapshot
from cluster.spec import ClusterSpec

NOW = 10_000.0
LONG_AGO: dict[str, float] = {}


def pools(*stages: str, max_replicas: int = 8) -> dict[str, PoolConfig]:
    return {s: PoolConfig(stage=s, min_replicas=1, max_replicas=max_replicas, ttft_slo_s=1.0, tbt_slo_s=0.1) for s in stages}


def config(*stages: str, sites: tuple[str, ...] = ("a",), **overrides) -> AutoscalerConfig:
    """Instant cold starts unless a test says otherwise: queues drain within the whole SLO."""
    overrides.setdefault("cold_start_s", 0.0)
    return AutoscalerConfig(
        pools=pools(*(stages or ("vision", "prefill", "decode"))),
        sites=sites,
        class_slos={"interactive": ClassSLO(ttft_s=1.0, tbt_s=0.1), "batch": ClassSLO(ttft_s=30.0, tbt_s=1.0)},
        **overrides,
    )


def hb(pool: str, replica: str, *, site: str = "a", queued_prefill: int = 0, running: int = 0, free: int = 100,
       tokens_per_s: float = 0.0, busy: float = 0.0, t: float = NOW - 1, prefill_rate: float = 0.0) -> ReplicaHeartbeat:
    return ReplicaHeartbeat(
        pool=pool, stage=pool, site=site, replica_id=replica, queued_requests=0, running_requests=running,
        queued_prefill_tokens=queued_prefill, free_kv_blocks=free, total_kv_blocks=100, tokens_per_s=tokens_per_s,
        busy_fraction=busy, power_w=300.0, timestamp_s=t, prefill_tokens_per_busy_s=prefill_rate,
    )


def req(i: int, *, path: str = "prefill>decode", images: int = 0, prompt: int = 100, ttft: float | None = 0.2,
        tbt_p99: float | None = 0.02, qos: str = "interactive", outcome: str = "ok", t: float = NOW - 1,
        site: str = "a") -> RequestRecord:
    return RequestRecord(
        request_id=f"r{i}", qos_class=qos, site=site, pool_path=path, ttft_s=ttft, tbt_p50_s=tbt_p99,
        tbt_p99_s=tbt_p99, prompt_tokens=prompt, output_tokens=16, outcome=outcome, timestamp_s=t, num_images=images,
    )


def snap(heartbeats=(), requests=(), **kw) -> TelemetrySnapshot:
    return TelemetrySnapshot(heartbeats=tuple(heartbeats), requests=tuple(requests), taken_at_s=kw.pop("taken_at_s", NOW), **kw)


def prefill_queue(total_queued: int, replicas: int = 2, busy: float = 0.5) -> list[ReplicaHeartbeat]:
    """Replicas that prefill 2,000 tokens per busy second, sharing `total_queued` tokens."""
    return [hb("prefill", f"p{i}", queued_prefill=total_queued // replicas, tokens_per_s=2000 * busy, busy=busy, prefill_rate=2000)
            for i in range(replicas)]


# -- each stage on its own signal -------------------------------------------------------------------

def test_prefill_grows_on_queued_tokens_while_decode_and_vision_stay():
    steady_decode = [hb("decode", f"d{i}", free=50, running=4, tokens_per_s=400, busy=0.5) for i in range(2)]
    # 6,000 queued tokens at 2,000 tokens/s within a 1 s TTFT: 3 replicas of work, 4 at 80%.
    p = plan(snap([*prefill_queue(6000), *steady_decode]), config(), {"vision@a": 1, "prefill@a": 2, "decode@a": 2}, NOW, LONG_AGO)
    assert p.desired == {"vision@a": 1, "prefill@a": 4, "decode@a": 2}
    assert "6000 queued prefill tokens" in p.target("prefill@a").reason
    assert "KV occupancy 50%" in p.target("decode@a").reason  # 1.0 replica of KV on 2: 50%, in band
    assert [d.target for d in p.changes()] == ["prefill@a"]


def test_prefill_proactive_term_follows_the_prompt_token_rate():
    # 60 requests × 2,000 prompt tokens in the 30 s window = 4,000 tokens/s; one replica does
    # 2,000: 2 replicas of work, 3 at 80%. Older requests fall outside the window, and one that
    # failed in the vision pool never reached prefill.
    requests = [req(i, prompt=2000) for i in range(60)] + [req(100 + i, prompt=2000, t=NOW - 31) for i in range(100)]
    requests.append(req(999, path="vision", images=1, prompt=100_000, ttft=None, tbt_p99=None, outcome="error"))
    p = plan(snap(prefill_queue(0, replicas=1), requests), config("prefill"), {"prefill@a": 1}, NOW, LONG_AGO)
    assert p.desired == {"prefill@a": 3}
    assert "4000 tokens/s arriving" in p.target("prefill@a").reason


def test_prefill_uses_profiled_capacity_until_replicas_have_measured_it():
    idle = [hb("prefill", "p0", queued_prefill=3000)]  # busy 0: nothing measured yet
    p = plan(snap(idle), config("prefill", prefill_tokens_per_s=1000.0), {"prefill@a": 1}, NOW, LONG_AGO)
    assert p.desired == {"prefill@a": 4}  # 3,000 / 1,000 = 3 replicas of work, 4 at 80%
    assert "1000 tokens/s per replica (profiled)" in p.target("prefill@a").reason


def test_vision_grows_on_image_rate_alone():
    requests = (
        [req(i, path="vision>prefill>decode", images=5) for i in range(24)]  # 120 images / 30 s = 4 /s
        + [req(100 + i, path="prefill>decode") for i in range(50)]  # text only: no vision work
        + [req(200 + i, path="vision>prefill>decode", images=9, outcome="rejected") for i in range(10)]
    )
    heartbeats = [*prefill_queue(1200, replicas=1), hb("decode", "d0", free=40, running=2, tokens_per_s=200, busy=0.5)]
    cfg = config(encode_s_per_image=0.25)  # 4 images/s × 0.25 s = 1 replica of work, 2 at 80%
    p = plan(snap(heartbeats, requests), cfg, {"vision@a": 1, "prefill@a": 1, "decode@a": 1}, NOW, LONG_AGO)
    assert p.desired == {"vision@a": 2, "prefill@a": 1, "decode@a": 1}
    assert "4.00 images/s served, × 0.250 s" in p.target("vision@a").reason


def test_decode_grows_on_kv_occupancy():
    full = [hb("decode", f"d{i}", free=5, running=10, tokens_per_s=1000, busy=1.0) for i in range(2)]
    p = plan(snap(full), config("decode"), {"decode@a": 2}, NOW, LONG_AGO)
    assert p.desired == {"decode@a": 3}  # 2 × 95% = 1.9 replicas of KV, 3 at 80%
    assert "KV occupancy 95%" in p.target("decode@a").reason


def test_decode_grows_on_estimated_tbt():
    # 40 sequences at 400 tokens per busy second: a token every 100 ms, the whole TBT SLO.
    slow = [hb("decode", f"d{i}", free=70, running=40, tokens_per_s=400, busy=1.0) for i in range(2)]
    p = plan(snap(slow), config("decode"), {"decode@a": 2}, NOW, LONG_AGO)
    assert p.desired == {"decode@a": 3}
    assert "estimated TBT up to 100 ms against the 100 ms TBT SLO" in p.target("decode@a").reason


@pytest.mark.parametrize(
    "queued, free, bound",
    [(2000, 50, "prefill-bound"),  # prefill 2.0 vs decode 1.0 replicas of work
     (0, 10, "decode-bound")],  # prefill 0 vs KV 2 × 90% = 1.8
)
def test_colocated_takes_the_larger_need(queued, free, bound):
    heartbeats = [hb("colocated", f"c{i}", queued_prefill=queued // 2, free=free, running=10, tokens_per_s=1000, busy=1.0,
                     prefill_rate=1000)
                  for i in range(2)]
    p = plan(snap(heartbeats), config("colocated"), {"colocated@a": 2}, NOW, LONG_AGO)
    assert p.desired == {"colocated@a": 3}
    assert p.target("colocated@a").reason.startswith(f"proactive 2 → 3: {bound}")


def test_sites_are_sized_independently():
    p = plan(snap([*prefill_queue(0), *[h for h in _at("b", prefill_queue(6000))]]), config("prefill", sites=("a", "b")),
             {"prefill@a": 2, "prefill@b": 2}, NOW, LONG_AGO)
    assert p.desired == {"prefill@a": 1, "prefill@b": 4}


def _at(site, heartbeats):
    return [ReplicaHeartbeat(**{**{f: getattr(h, f) for f in h.__dataclass_fields__}, "site": site}) for h in heartbeats]


# -- reactive term ----------------------------------------------------------------------------------

def missing_ttft(qos: str = "interactive") -> list[RequestRecord]:
    """20 recent requests, 5 over the 1 s TTFT: 25% missed (threshold 10%)."""
    return [req(i, ttft=1.5 if i < 5 else 0.2, qos=qos) for i in range(20)]


def test_reactive_step_when_slo_is_missed_and_the_stage_is_busy():
    # Proactively the pool is nearly idle (67 tokens/s arriving); the misses add one replica.
    p = plan(snap(prefill_queue(0, busy=0.9), missing_ttft()), config("prefill"), {"prefill@a": 2}, NOW, LONG_AGO)
    assert p.desired == {"prefill@a": 3}
    assert p.target("prefill@a").reason.startswith("reactive 2 → 3: 5 of 20 recent requests missed their TTFT SLO")


def test_misses_of_an_idle_stage_are_not_its_own():
    p = plan(snap(prefill_queue(0, busy=0.2), missing_ttft()), config("prefill"), {"prefill@a": 2}, NOW, LONG_AGO)
    assert p.desired == {"prefill@a": 1}  # no reactive step; the idle pool shrinks instead


def test_misses_are_judged_against_each_class_slo():
    p = plan(snap(prefill_queue(0, busy=0.9), missing_ttft(qos="batch")), config("prefill"), {"prefill@a": 2}, NOW, LONG_AGO)
    assert p.desired == {"prefill@a": 1}  # 1.5 s is within the batch class's 30 s


def test_decode_reacts_to_p99_tbt_misses():
    requests = [req(i, tbt_p99=0.3 if i < 4 else 0.05) for i in range(20)]
    busy = [hb("decode", f"d{i}", free=60, running=4, tokens_per_s=400, busy=0.9) for i in range(2)]
    p = plan(snap(busy, requests), config("decode"), {"decode@a": 2}, NOW, LONG_AGO)
    assert p.desired == {"decode@a": 3}
    assert "missed their P99 TBT SLO" in p.target("decode@a").reason


def test_reactive_waits_for_the_last_change_to_show_and_blocks_shrinking():
    p = plan(snap(prefill_queue(0, busy=0.9), missing_ttft()), config("prefill"), {"prefill@a": 2}, NOW, {"prefill@a": NOW - 5})
    assert p.desired == {"prefill@a": 2}
    assert "reactive cool-down 15 s" in p.target("prefill@a").reason


# -- bounds, cool-down, hysteresis ------------------------------------------------------------------

def test_bounds():
    p = plan(snap(prefill_queue(100_000)), config("prefill"), {"prefill@a": 2}, NOW, LONG_AGO)
    assert p.desired == {"prefill@a": 8}
    assert p.target("prefill@a").reason.endswith("(capped at max_replicas 8)")
    p = plan(snap(), config("vision"), {"vision@a": 0}, NOW, LONG_AGO)
    assert p.desired == {"vision@a": 1}
    assert p.target("vision@a").reason.endswith("(raised to min_replicas 1)")
    p = plan(snap(), config("vision"), {"vision@a": 1}, NOW, LONG_AGO)
    assert p.desired == {"vision@a": 1} and "at min_replicas" in p.target("vision@a").reason


@pytest.mark.parametrize("since_change_s, desired", [(30.0, 4), (59.9, 4), (60.0, 3), (600.0, 3)])
def test_scale_down_waits_for_the_cooldown_and_takes_one_step(since_change_s, desired):
    p = plan(snap(prefill_queue(0, replicas=4)), config("prefill"), {"prefill@a": 4}, NOW, {"prefill@a": NOW - since_change_s})
    assert p.desired == {"prefill@a": desired}  # idle: the load would allow 1, but one step at a time
    if desired == 4:
        assert "cool-down 60 s" in p.target("prefill@a").reason


@pytest.mark.parametrize(
    "queued, desired, why",
    [(2400, 2, "within [50%, 80%]"),  # 1.2 replicas of work on 2: 60%
     (1800, 2, "1 replica would run at 90% > 80%"),  # 45% < 50%, but one replica would be too hot
     (1400, 1, "scale down 2 → 1")],  # 35%, and one replica would run at 70%
)
def test_hysteresis(queued, desired, why):
    p = plan(snap(prefill_queue(queued)), config("prefill"), {"prefill@a": 2}, NOW, LONG_AGO)
    assert p.desired == {"prefill@a": desired}
    assert why in p.target("prefill@a").reason


# -- missing and stale data -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "snapshot, why",
    [(snap(prefill_queue(100_000), stale=True, age_s=12.0), "telemetry is stale (Redis unreachable, last good read 12.0 s old)"),
     (snap(prefill_queue(100_000), taken_at_s=NOW - 20), "telemetry snapshot is 20.0 s old (limit 15 s)")],
)
def test_no_action_on_stale_data(snapshot, why):
    current = {"vision@a": 0, "prefill@a": 2, "decode@a": 5}  # even out-of-bounds sizes are left alone
    p = plan(snapshot, config(), current, NOW, LONG_AGO)
    assert p.desired == current and p.changes() == ()
    assert all(why in t.reason for t in p.targets)


def test_hold_without_fresh_heartbeats():
    old = [hb("prefill", "p0", queued_prefill=50_000, tokens_per_s=1000, busy=0.5, t=NOW - 31)]
    p = plan(snap(old), config("prefill"), {"prefill@a": 2}, NOW, LONG_AGO)
    assert p.desired == {"prefill@a": 2}
    assert "no fresh heartbeats" in p.target("prefill@a").reason


# -- config -----------------------------------------------------------------------------------------

def test_from_spec_takes_bounds_sites_and_the_tightest_slo():
    cfg = from_spec(ClusterSpec.default(), cooldown_s=5.0)
    assert cfg.sites == ("local",) and cfg.cooldown_s == 5.0
    assert cfg.pools["prefill"] == PoolConfig(stage="prefill", min_replicas=1, max_replicas=4, ttft_slo_s=1.0, tbt_slo_s=0.1)
    assert set(cfg.pools) == {"vision", "prefill", "decode"}
    assert cfg.class_slos["batch"] == ClassSLO(ttft_s=30.0, tbt_s=1.0)


def test_config_errors_name_the_field():
    with pytest.raises(AutoscalerConfigError, match="need 0 < down < up <= 1, got 0.9, 0.8"):
        config(scale_down_utilisation=0.9)
    with pytest.raises(AutoscalerConfigError, match="min_replicas, max_replicas"):
        PoolConfig(stage="prefill", min_replicas=3, max_replicas=2, ttft_slo_s=1.0, tbt_slo_s=0.1)


def test_policy_modules_import_no_adapter_and_no_clock():
    forbidden = {"ray", "redis", "torch", "time", "datetime"}
    root = Path(__file__).resolve().parents[2] / "autoscaler"
    adapters = {"serve_hook.py", "round_log.py"}  # Serve's hook reads Redis; the round log reads files
    for path in sorted(p for p in root.glob("*.py") if p.name not in adapters):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & forbidden, f"{path} imports {names}"


def test_vision_grows_on_queued_images_while_nothing_has_completed():
    """A burst whose latency outgrows the request window: no image request has finished yet, but
    150 images wait at the vision replica; the pool must see that demand."""
    from dataclasses import replace

    queued = replace(hb("vision", "v0", busy=1.0), queued_images=150)
    heartbeats = [queued, *prefill_queue(0, replicas=1), hb("decode", "d0", free=90, running=1, tokens_per_s=50, busy=0.2)]
    p = plan(snap(heartbeats, []), config(encode_s_per_image=0.02), {"vision@a": 1, "prefill@a": 1, "decode@a": 1}, NOW, LONG_AGO)
    # 150 images × 0.02 s within the 1 s TTFT SLO: 3 replicas of work, 4 at 80%.
    assert p.desired["vision@a"] == 4
    assert "150 images queued" in p.target("vision@a").reason


def test_decode_counts_hand_offs_waiting_for_kv():
    """A decode replica at 90% KV with as many prefilled requests waiting as running needs
    about two replicas' worth of KV, though its occupancy alone says 0.9."""
    from dataclasses import replace

    full = replace(hb("decode", "d0", free=10, running=8, tokens_per_s=400, busy=0.5), queued_requests=8)
    p = plan(snap([full, *prefill_queue(0, replicas=1)], []), config("prefill", "decode"),
             {"prefill@a": 1, "decode@a": 1}, NOW, LONG_AGO)
    assert p.desired["decode@a"] == 3  # 1.8 replicas of KV at 80% utilisation
    assert "8 hand-offs waiting" in p.target("decode@a").reason


def test_a_stage_s_queue_is_held_to_the_tightest_slo_of_the_classes_it_serves():
    from dataclasses import replace

    from autoscaler.signals import ttft_target

    pool = pools("vision")["vision"]  # the pool's own target: the tightest class, 1 s
    cfg = config("vision")
    assert ttft_target([req(1, qos="batch", images=2)], pool, cfg) == 30.0
    assert ttft_target([req(1, qos="batch"), req(2, qos="interactive")], pool, cfg) == 1.0
    assert ttft_target([], pool, cfg) == 1.0
    queued = replace(hb("vision", "v0", busy=1.0), queued_images=300)
    batch_only = [req(i, path="vision>prefill>decode", images=1, qos="batch") for i in range(5)]
    p = plan(snap([queued], batch_only), config("vision", encode_s_per_image=0.1), {"vision@a": 1}, NOW, LONG_AGO)
    assert p.desired["vision@a"] == 2  # 300 × 0.1 s within 30 s, + 0.1 replicas served: 1.1 of work


def test_a_queue_drains_within_the_slo_less_a_new_replica_s_cold_start():
    from dataclasses import replace

    queued = replace(hb("vision", "v0", busy=1.0), queued_images=100)
    sized = {}
    for cold in (0.0, 8.0, 30.0):
        p = plan(snap([queued], []), config("vision", encode_s_per_image=0.04, cold_start_s=cold), {"vision@a": 1}, NOW, LONG_AGO)
        sized[cold] = p.desired["vision@a"]
    # 100 × 0.04 s = 4 replica-seconds: over the 1 s SLO → 5 at 80%; a cold start of 8 s leaves
    # at least a quarter of the SLO, 0.25 s → 16 replicas of work, capped at max_replicas 8.
    assert sized == {0.0: 5, 8.0: 8, 30.0: 8}
    assert "to drain within 0.25 s of the 1 s TTFT SLO" in plan(
        snap([queued], []), config("vision", encode_s_per_image=0.04, cold_start_s=30.0), {"vision@a": 1}, NOW, LONG_AGO
    ).target("vision@a").reason
