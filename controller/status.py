"""`pavana status`: pools × sites with desired and running replicas, SLO attainment per QoS
class, and the last decisions with their reasons — read from Redis, so it works from any
machine that reaches the cluster's Redis."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from cluster.records import Decision, Plan, RequestRecord, TelemetrySnapshot
from cluster.spec import ClusterSpec
from cluster.telemetry import TelemetryStore, TelemetryUnavailable


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


async def read_status(spec: ClusterSpec) -> tuple[TelemetrySnapshot, Plan | None, list[Decision]]:
    store = TelemetryStore.from_spec(spec)
    try:
        snapshot = await store.snapshot()
        try:
            plan, decisions = await store.read_plan(), await store.recent_decisions(10)
        except TelemetryUnavailable:
            plan, decisions = None, []
        return snapshot, plan, decisions
    finally:
        await store.close()


def render(spec: ClusterSpec, snapshot: TelemetrySnapshot, plan: Plan | None, decisions: list[Decision], console: Console) -> None:
    if snapshot.stale:
        console.print(f"[yellow]Redis at {spec.redis_url} is unreachable: no telemetry[/yellow]")
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
    slo = Table(title=f"SLO attainment (last {len(snapshot.requests)} requests)")
    for col in ("class", "requests", "within SLO"):
        slo.add_column(col)
    for a in slo_attainment(snapshot.requests, spec):
        slo.add_row(a.qos_class, str(a.requests), "-" if not a.requests else f"{a.fraction:.1%}")
    console.print(slo)
    if decisions:
        table = Table(title="Last decisions")
        for col in ("kind", "target", "change", "reason"):
            table.add_column(col)
        for d in decisions:
            table.add_row(d.kind, d.target, f"{d.before} → {d.after}", d.reason)
        console.print(table)


def status(spec: ClusterSpec, console: Console) -> None:
    render(spec, *asyncio.run(read_status(spec)), console=console)
