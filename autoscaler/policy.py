"""The per-pool autoscaler: desired replicas for every pool@site, each with a reason (issue 5).

Pure: a snapshot, the config, the current sizes and the time in; a `Plan` out. The same call
runs in the controller's reconcile loop, the simulator and the tests.

For each pool@site:
- proactive: the stage's load (`signals`) sized at the upper utilisation threshold; growth
  is immediate, to as many replicas as the load needs;
- reactive: when recent requests miss their SLO and the stage is busy enough to be the cause,
  one more replica, at most once per reactive cool-down;
- shrinking is cautious: only below the lower utilisation threshold (hysteresis), only when
  the smaller pool would still sit under the upper one, only after the cool-down since the
  pool's last change, one replica per interval, and never while its SLO is being missed;
- min/max bounds always; on stale telemetry, no change at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from autoscaler.config import AutoscalerConfig, PoolConfig
from autoscaler.signals import Load, colocated_load, decode_load, prefill_load, recent_requests, slo_misses, vision_load
from cluster.records import Plan, PoolTarget, TelemetrySnapshot, pool_key

_USES_HEARTBEATS = ("prefill", "decode", "colocated")


def plan(
    snapshot: TelemetrySnapshot,
    config: AutoscalerConfig,
    current: Mapping[str, int],
    now_s: float,
    last_change_s: Mapping[str, float],
) -> Plan:
    """`current` and `last_change_s` are keyed by pool@site; a missing size counts as 0 and a
    missing last change as long ago."""
    stale = _staleness(snapshot, config, now_s)
    targets = []
    for site in config.sites:
        for name, pool in config.pools.items():
            key = pool_key(name, site)
            replicas = current.get(key, 0)
            if stale:
                desired, reason = replicas, f"hold at {replicas}: {stale}"
            else:
                since_change = now_s - last_change_s.get(key, -math.inf)
                desired, reason = _size(name, site, pool, replicas, snapshot, config, now_s, since_change)
            targets.append(PoolTarget(pool=name, site=site, current=replicas, desired=desired, reason=reason))
    return Plan(targets=tuple(targets), timestamp_s=now_s)


def _staleness(snapshot: TelemetrySnapshot, config: AutoscalerConfig, now_s: float) -> str | None:
    if snapshot.stale:
        return f"telemetry is stale (Redis unreachable, last good read {snapshot.age_s:.1f} s old)"
    age = now_s - snapshot.taken_at_s
    if age > config.max_snapshot_age_s:
        return f"telemetry snapshot is {age:.1f} s old (limit {config.max_snapshot_age_s:g} s)"
    return None


def _size(
    name: str,
    site: str,
    pool: PoolConfig,
    replicas: int,
    snapshot: TelemetrySnapshot,
    config: AutoscalerConfig,
    now_s: float,
    since_change_s: float,
) -> tuple[int, str]:
    load, heartbeats, recent = pool_load(name, site, pool, snapshot, config, now_s)
    if replicas > 0 and not heartbeats and pool.stage in _USES_HEARTBEATS:
        return _bounded(replicas, pool, f"hold at {replicas}: no fresh heartbeats from its replicas")

    up, down = config.scale_up_utilisation, config.scale_down_utilisation
    needed = math.ceil(load.replicas / up - 1e-9)
    utilisation = load.replicas / replicas if replicas else math.inf if load.replicas > 0 else 0.0
    about = f"{load.detail}: {load.replicas:.2f} replicas of work"
    if replicas:
        about += f", utilisation {utilisation:.0%}"
    missing = _reactive(heartbeats, recent, pool, config)

    if needed > replicas:
        return _bounded(needed, pool, f"proactive {replicas} → {needed}: {about} > {up:.0%}")
    if missing and since_change_s >= config.reactive_cooldown_s:
        return _bounded(replicas + 1, pool, f"reactive {replicas} → {replicas + 1}: {missing}; {about}")
    if missing:
        return _bounded(replicas, pool, f"hold at {replicas}: {missing}, but the last change was "
                        f"{since_change_s:.0f} s ago (reactive cool-down {config.reactive_cooldown_s:g} s)")
    if replicas == 0:
        return _bounded(0, pool, f"hold at 0: {about}")
    if utilisation >= down:
        return _bounded(replicas, pool, f"hold at {replicas}: {about} within [{down:.0%}, {up:.0%}]")
    if replicas <= pool.min_replicas:
        return _bounded(replicas, pool, f"hold at {replicas}: at min_replicas; {about}")
    if replicas > 1 and load.replicas / (replicas - 1) > up:
        return _bounded(replicas, pool, f"hold at {replicas}: {about} < {down:.0%}, but {_replicas(replicas - 1)} "
                        f"would run at {load.replicas / (replicas - 1):.0%} > {up:.0%}")
    if since_change_s < config.cooldown_s:
        return _bounded(replicas, pool, f"hold at {replicas}: {about} < {down:.0%}, but the last change was "
                        f"{since_change_s:.0f} s ago (cool-down {config.cooldown_s:g} s)")
    return _bounded(replicas - 1, pool, f"scale down {replicas} → {replicas - 1}: {about} < {down:.0%}")


def pool_load(
    name: str, site: str, pool: PoolConfig, snapshot: TelemetrySnapshot, config: AutoscalerConfig, now_s: float
) -> tuple[Load, list, list]:
    """A pool@site's load from its fresh heartbeats and the site's recent requests through its stage."""
    heartbeats = [h for h in snapshot.heartbeats_of(name, site) if now_s - h.timestamp_s <= config.max_heartbeat_age_s]
    recent = recent_requests(snapshot.requests, site, pool.stage, now_s, config.request_window_s)
    return _load(pool, heartbeats, recent, config), heartbeats, recent


def needs(snapshot: TelemetrySnapshot, config: AutoscalerConfig, now_s: float) -> dict[str, float]:
    """Replicas each pool@site's load needs at the upper utilisation threshold: what the joint
    allocation under a site's caps (`power_cap.fit_to_power`) weighs replicas by."""
    return {
        pool_key(name, site): pool_load(name, site, pool, snapshot, config, now_s)[0].replicas / config.scale_up_utilisation
        for site in config.sites
        for name, pool in config.pools.items()
    }


def _load(pool: PoolConfig, heartbeats, recent, config: AutoscalerConfig) -> Load:
    if pool.stage == "vision":
        return vision_load(heartbeats, recent, pool, config)
    if pool.stage == "prefill":
        return prefill_load(heartbeats, recent, pool, config)
    if pool.stage == "decode":
        return decode_load(heartbeats, pool)
    return colocated_load(heartbeats, recent, pool, config)


def _reactive(heartbeats, recent, pool: PoolConfig, config: AutoscalerConfig) -> str | None:
    """A sentence when this stage is missing its SLO and is busy enough to be the cause.

    The busy gate keeps one stage's misses from growing another: a TTFT miss on an image
    request may come from vision or from prefill, and only the busy one is worth growing.
    """
    misses, judged = slo_misses(recent, pool.stage, pool, config)
    if judged < config.min_requests_for_reactive or misses <= config.slo_miss_fraction * judged:
        return None
    busy = sum(h.busy_fraction for h in heartbeats) / len(heartbeats) if heartbeats else 0.0
    if busy < config.reactive_min_busy_fraction:
        return None
    slo = {"vision": "TTFT", "prefill": "TTFT", "decode": "P99 TBT"}.get(pool.stage, "TTFT or P99 TBT")
    return (
        f"{misses} of {judged} recent requests missed their {slo} SLO "
        f"(> {config.slo_miss_fraction:.0%}) at {busy:.0%} busy"
    )


def _replicas(n: int) -> str:
    return f"{n} replica" if n == 1 else f"{n} replicas"


def _bounded(desired: int, pool: PoolConfig, reason: str) -> tuple[int, str]:
    if desired > pool.max_replicas:
        return pool.max_replicas, f"{reason} (capped at max_replicas {pool.max_replicas})"
    if desired < pool.min_replicas:
        return pool.min_replicas, f"{reason} (raised to min_replicas {pool.min_replicas})"
    return desired, reason
