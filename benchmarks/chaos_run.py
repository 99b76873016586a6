"""One chaos run against a deployed application: traffic with streams runs while the seeded
schedule's faults strike one after another, each into a whole cluster; then the traffic
drains and every live replica's KV blocks are counted. Shared by `pavana bench chaos` and
`tests/reliability/test_chaos.py`, so the test checks exactly what the benchmark measures.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.chaos_faults import (
    NotWhole,
    PrivateRedis,
    busiest_replica,
    in_thread,
    kill_reconciler,
    kill_replica,
    kv_blocks_after_drain,
    reconciler_answers,
    replica_ids,
    running_replicas,
    until,
)
from benchmarks.chaos_schedule import RECONCILER_KILL, REDIS_RESTART, PlannedFault, killed_pool
from benchmarks.chaos_traffic import BROKEN, FAILED, OK, FixedPrompt, StreamRecord, Traffic, http_client

LLM_STAGES = ("prefill", "decode", "colocated")


@dataclass(frozen=True)
class WholeBounds:
    """How long the cluster may take to be whole again after each kind of fault."""

    replica_s: float = 240.0
    reconciler_s: float = 90.0
    redis_s: float = 60.0


@dataclass
class ChaosTarget:
    """The deployed application under chaos: its spec (one deployment per pool and site, each
    pinned to a fixed size), its OpenAI base URL, and the private Redis it reports to."""

    app: str
    spec: Any
    url: str
    api_key: str
    redis: PrivateRedis

    def deployments(self, stages: tuple[str, ...] | None = None) -> dict[str, int]:
        """Deployment name -> the replicas it runs when whole."""
        from controller.app import deployment_name

        return {
            deployment_name(stage, site.name): pool.min_replicas
            for site in self.spec.sites
            for stage, pool in self.spec.pools.items()
            if stages is None or stage in stages
        }

    def replicas(self) -> set[str]:
        return {r for d in self.deployments() for r in replica_ids(self.app, d)}


async def cluster_whole(target: ChaosTarget, store: Any, *, killed: str | None, planned_since_s: float | None, timeout_s: float) -> float:
    """Every pool at its size (without the killed replica), the reconcile actor answering (and,
    after its kill, planning since), Redis answering with every live replica's heartbeat."""

    async def whole() -> bool:
        for deployment, size in target.deployments().items():
            # A dead replica leaves Serve's named actors at once, while Serve may still count it
            # running for a while: whole means as many live actors as the size, the killed one
            # not among them, and Serve running that many.
            ids = await in_thread(replica_ids, target.app, deployment)
            if killed in ids or len(ids) < size or await in_thread(running_replicas, target.app, deployment) < size:
                return False
        if not await in_thread(reconciler_answers):
            return False
        if planned_since_s is not None:
            plan = await store.read_plan()
            if plan is None or plan.timestamp_s <= planned_since_s:
                return False
        snapshot = await store.snapshot()  # stale: Redis not read, only the store's last good read
        beating = {h.replica_id for h in snapshot.heartbeats}
        return not snapshot.stale and not (await in_thread(target.replicas)) - beating

    return await until(whole, timeout_s, "the cluster whole again")


BUSY_WAIT_S = 20.0  # how long a replica kill waits for its pool to be serving something


async def busy_replica(app: str, deployment: str, rng: random.Random) -> tuple[str, int]:
    """The busiest replica of the pool, waiting (bounded) for a moment when it serves a
    request, so that a kill lands under work where the traffic allows."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while True:
        replica_id, load = await in_thread(busiest_replica, app, deployment, rng)
        if load > 0 or time.monotonic() > deadline:
            return replica_id, load
        await asyncio.sleep(0.05)


async def strike(fault: PlannedFault, target: ChaosTarget, traffic: Traffic, store: Any, rng: random.Random, bounds: WholeBounds) -> dict[str, Any]:
    """Inject one fault now and wait for the cluster to be whole again; what happened."""
    from controller.app import deployment_name

    record: dict[str, Any] = {"index": fault.index, "kind": fault.kind, "planned_s": round(fault.at_s, 2)}
    killed, planned_since, bound = None, None, bounds.redis_s
    pool = killed_pool(fault.kind)
    try:
        if pool is not None:
            site = rng.choice(target.spec.sites).name
            deployment = deployment_name(pool, site)
            killed, load = await busy_replica(target.app, deployment, rng)
            await in_thread(kill_replica, target.app, deployment, killed)
            record.update(target=f"{deployment}#{killed}", target_requests=load)
            bound = bounds.replica_s
        elif fault.kind == RECONCILER_KILL:
            planned_since = time.time()
            await in_thread(kill_reconciler)
            record["target"] = "reconcile actor"
            bound = bounds.reconciler_s
        elif fault.kind == REDIS_RESTART:
            await in_thread(target.redis.restart)
            record["target"] = target.redis.url
        else:
            raise ValueError(f"kind: no such fault {fault.kind!r}")
    except Exception as exc:  # recorded, not injected; the run goes on
        record["not_injected"] = f"{type(exc).__name__}: {exc}"
    record.update(at_s=round(traffic.clock(), 2), streams_in_flight=traffic.in_flight())  # struck now
    try:
        record["whole_after_s"] = round(await cluster_whole(target, store, killed=killed, planned_since_s=planned_since, timeout_s=bound), 2)
    except NotWhole as exc:
        record["not_whole"] = str(exc)
    record["whole_at_s"] = round(traffic.clock(), 2)
    return record


def effects(faults: list[dict[str, Any]], records: list[StreamRecord]) -> None:
    """For each fault, the requests in flight between its strike and the cluster whole again,
    by outcome, and their client retries (added to each fault's record)."""
    for fault in faults:
        touched = [r for r in records if r.sent_s <= fault["whole_at_s"] and (r.ended_s or float("inf")) >= fault["at_s"]]
        fault["requests_touched"] = len(touched)
        fault.update({f"touched_{o}": sum(r.outcome == o for r in touched) for o in (OK, FAILED, BROKEN)})
        fault["touched_retries"] = sum(r.retries for r in touched)


async def run_chaos(
    target: ChaosTarget, prompts: list[FixedPrompt], *, rate_rps: float, schedule: list[PlannedFault], seed: int,
    tail_s: float = 10.0, bounds: WholeBounds = WholeBounds(), kv_drain_s: float = 60.0,
    on_fault: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Traffic at `rate_rps` from now until `tail_s` after the cluster is whole after the last
    fault; faults strike no earlier than planned and never before the cluster is whole.
    `on_fault` sees each fault's record as soon as the cluster is whole after it."""
    from cluster.telemetry import TelemetryStore

    store = TelemetryStore.from_spec(target.spec)
    rng = random.Random(seed)
    faults: list[dict[str, Any]] = []
    try:
        async with http_client(target.url, target.api_key) as client:
            traffic = Traffic(client, prompts, rate_rps, seed)
            dispatching = asyncio.create_task(traffic.run())
            for fault in schedule:
                await asyncio.sleep(max(0.0, fault.at_s - traffic.clock()))
                faults.append(await strike(fault, target, traffic, store, rng, bounds))
                if on_fault is not None:
                    on_fault(faults[-1])
            await asyncio.sleep(tail_s)
            traffic.stop()
            records = await dispatching
        kv = await kv_blocks_after_drain(target.app, list(target.deployments(LLM_STAGES)), kv_drain_s)
    finally:
        await store.close()
    effects(faults, records)
    by_kind: dict[str, int] = {}
    for f in faults:
        by_kind[f["kind"]] = by_kind.get(f["kind"], 0) + 1
    bad = [r for r in records if r.outcome != OK]
    return {
        "requests": len(records),
        "failed": sum(r.outcome == FAILED for r in records),
        "broken_streams": sum(r.outcome == BROKEN for r in records),
        "faults_injected": sum("not_injected" not in f for f in faults),
        "kv_blocks_leaked": sum(b["in_use"] for b in kv.values()),
        "client_retries": sum(r.retries for r in records),
        "faults_by_kind": by_kind,
        "faults_not_whole": sum("not_whole" in f for f in faults),
        "faults_not_injected": sum("not_injected" in f for f in faults),
        "faults": faults,
        "kv_blocks": kv,
        "traffic_s": round(max((r.ended_s or 0.0) for r in records), 1) if records else 0.0,
        "rate_rps": rate_rps,
        "seed": seed,
        "bad_requests": [r.summary() for r in bad[:50]],
    }
