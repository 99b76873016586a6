"""`pavana status`: pools × sites with desired and running replicas, SLO attainment per QoS
class, and the last decisions with their reasons — read from Redis, so it works from any
machine that reaches the cluster's Redis."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from cluster.records import Decision, Plan, RequestRecord, TelemetrySnapshot
from cluster.spec import ClusterSpec
from cluster.telemetry import TelemetryStore, TelemetryUnavailable, run_prefix


@dataclass(frozen=True, slots=True)
class ClassAttainment:
    qos_class: str
    requests: int
    within_slo: int

    @property
    def fraction(self) -> float:
        return self.within_slo / self.requests if self.requests else float("nan")


def slo_attainment(records: tuple[RequestRecord, ...], spec: ClusterSpec) -> list[ClassAttainment]:
    """A request meets its SLO when it finished and its TTFT and P99 TBT are within its class's targets."""
    result = []
    for qos in spec.qos_classes:
        mine = [r for r in records if r.qos_class == qos.name]
        ok = sum(
            1
            for r in mine
            if r.outcome == "ok"
            and r.ttft_s is not None
            and r.ttft_s <= qos.slo.ttft_s
            and (r.tbt_p99_s is None or r.tbt_p99_s <= qos.slo.tbt_s)
        )
        result.append(ClassAttainment(qos.name, len(mine), ok))
    return result


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Which run of the cluster the status shows (`pavana up` scopes telemetry per run)."""

    run_id: str | None  # None: the spec's own prefix (a cluster not started by `pavana up`)
    started_s: float | None = None


async def current_run(spec: ClusterSpec) -> tuple[ClusterSpec, RunInfo]:
    """The spec scoped to the run its prefix points at, if any."""
    base = TelemetryStore.from_spec(spec)
    try:
        run = await base.current_run()
    except TelemetryUnavailable:
        run = None
    finally:
        await base.close()
    if run is None:
        return spec, RunInfo(None)
    run_id, started_s = run
    return spec.model_copy(update={"telemetry_prefix": run_prefix(spec.telemetry_prefix, run_id)}), RunInfo(run_id, started_s)


async def read_status(spec: ClusterSpec) -> tuple[TelemetrySnapshot, Plan | None, list[Decision], RunInfo]:
    spec, run = await current_run(spec)
    store = TelemetryStore.from_spec(spec)
    try:
        snapshot = await store.snapshot()
        try:
            plan, decisions = await store.read_plan(), await store.recent_decisions(10)
        except TelemetryUnavailable:
            plan, decisions = None, []
        return snapshot, plan, decisions, run
    finally:
        await store.close()


def age(seconds: float) -> str:
    """'42 s ago', '3 min ago', '2 h ago'."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


def render(
    spec: ClusterSpec,
    snapshot: TelemetrySnapshot,
    plan: Plan | None,
    decisions: list[Decision],
    run: RunInfo,
    console: Console,
    now_s: float | None = None,
) -> None:
    now_s = time.time() if now_s is None else now_s
    if snapshot.stale:
        console.print(f"[yellow]Redis at {spec.redis_url} is unreachable: no telemetry[/yellow]")
    if run.run_id is not None and run.started_s is not None:
        console.print(f"Run {run.run_id}, started {age(now_s - run.started_s)}")
    running: dict[str, int] = {}
    for hb in snapshot.heartbeats:
        running[hb.pool_key] = running.get(hb.pool_key, 0) + 1
    pools = Table(title="Pools")
    for col in ("pool@site", "running", "desired", "why"):
        pools.add_column(col, justify="right" if col in ("running", "desired") else "left")
    targets = {t.key: t for t in plan.targets} if plan else {}
    for site in spec.sites:
        for stage in spec.pools:
            key = f"{stage}@{site.name}"
            t = targets.get(key)
            pools.add_row(key, str(running.get(key, 0)), str(t.desired) if t else "-", t.reason if t else "no plan yet")
    console.print(pools)
    oldest = min((r.timestamp_s for r in snapshot.requests), default=None)
    since = f", the oldest {age(now_s - oldest)}" if oldest is not None else ""
    slo = Table(title=f"SLO attainment (last {len(snapshot.requests)} requests{since})")
    for col in ("class", "requests", "within SLO"):
        slo.add_column(col)
    for a in slo_attainment(snapshot.requests, spec):
        slo.add_row(a.qos_class, str(a.requests), "-" if not a.requests else f"{a.fraction:.1%}")
    console.print(slo)
    if decisions:
        table = Table(title="Last decisions")
        for col in ("when", "kind", "target", "change", "reason"):
            table.add_column(col)
        for d in decisions:
            table.add_row(age(now_s - d.timestamp_s), d.kind, d.target, f"{d.before} → {d.after}", d.reason)
        console.print(table)


def status(spec: ClusterSpec, console: Console) -> None:
    snapshot, plan, decisions, run = asyncio.run(read_status(spec))
    render(spec, snapshot, plan, decisions, run, console)
