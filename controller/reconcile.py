"""The reconcile loop: observe ▸ plan ▸ act, every few seconds (KubeRay-style).

Observe: the telemetry snapshot from Redis and the replicas Ray Serve runs. Plan: the pure
autoscaler (`autoscaler.policy.plan`). Act: write the plan where Ray Serve's autoscaling hook
(`autoscaler.serve_hook.FollowPlan`) reads it, and record every change as a decision with its
reason, for `pavana status` and the dashboard. Acting on the same plan twice changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from autoscaler.config import from_spec as autoscaler_config
from autoscaler.policy import plan as make_plan
from autoscaler.power_cap import fit_to_power
from cluster.records import Plan, SitePower, TelemetrySnapshot, pool_key
from cluster.spec import ClusterSpec
from cluster.telemetry import TelemetryStore
from controller.power import PowerSources

log = logging.getLogger(__name__)

RECONCILER_NAME = "pavana-reconciler"
NAMESPACE = "pavana"


def running_replicas(spec: ClusterSpec, app_name: str) -> dict[str, int]:
    """Replicas Ray Serve reports RUNNING, by pool@site."""
    from ray import serve

    from controller.app import deployment_name

    app = serve.status().applications.get(app_name)
    counts: dict[str, int] = {}
    for site in spec.sites:
        for stage in spec.pools:
            deployment = app.deployments.get(deployment_name(stage, site.name)) if app else None
            states = deployment.replica_states if deployment else {}
            counts[pool_key(stage, site.name)] = int(states.get("RUNNING", 0))
    return counts


class Reconciler:
    def __init__(
        self, spec: ClusterSpec, *, app_name: str = "pavana", interval_s: float = 5.0, autoscaler: dict[str, Any] | None = None
    ) -> None:
        """`autoscaler` overrides the autoscaler's thresholds and profiled costs (cool-down, ...)."""
        self.spec = spec
        self.app_name = app_name
        self.interval_s = interval_s
        self.store = TelemetryStore.from_spec(spec)
        self.config = autoscaler_config(spec, **(autoscaler or {}))
        self.power = PowerSources(spec)
        self.required_stages = frozenset({"colocated"} if spec.topology == "colocated" else {"prefill", "decode"})
        self.last_change_s: dict[str, float] = {}
        self.last_plan: Plan | None = None

    async def observe(self) -> tuple[TelemetrySnapshot, dict[str, int]]:
        snapshot = await self.store.snapshot()
        current = await asyncio.get_running_loop().run_in_executor(None, running_replicas, self.spec, self.app_name)
        return snapshot, current

    async def act(self, plan: Plan, power: list[SitePower] = ()) -> None:
        """Publish the plan for the autoscaling hook and record each change with its reason."""
        changes = plan.changes()
        try:
            await self.store.write_batch([plan, *changes, *power])
        except ConnectionError as exc:
            log.warning("reconcile: cannot write the plan (%s); Serve keeps its current sizes", exc)
            return
        for decision in changes:
            self.last_change_s[decision.target] = plan.timestamp_s
            log.info("%s %s: %d -> %d (%s)", decision.kind, decision.target, decision.before, decision.after, decision.reason)

    async def reconcile_once(self, now_s: float | None = None) -> Plan:
        """Size each pool for its demand, then fit every site under the power it has now."""
        now_s = now_s if now_s is not None else time.time()
        snapshot, current = await self.observe()
        plan = make_plan(snapshot, self.config, current, now_s, self.last_change_s)
        if not snapshot.stale:  # no action on stale data, power included
            plan = fit_to_power(plan, self.power.site_inputs(snapshot, now_s), self.required_stages)
        await self.act(plan, self.power.published(snapshot, now_s))
        self.last_plan = plan
        return plan

    async def run(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except Exception:  # the loop outlives one bad round; the next one retries
                log.exception("reconcile round failed")
            await asyncio.sleep(self.interval_s)


@ray.remote(num_cpus=0)
class ReconcilerActor:
    """The loop as a detached Ray actor, so it lives with the cluster, not with `pavana up`."""

    def __init__(self, spec: dict[str, Any], app_name: str, interval_s: float) -> None:
        self.reconciler = Reconciler(ClusterSpec.parse(spec), app_name=app_name, interval_s=interval_s)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.reconciler.run())

    async def reconcile_once(self) -> dict[str, Any]:
        plan = await self.reconciler.reconcile_once()
        return {t.key: {"current": t.current, "desired": t.desired, "reason": t.reason} for t in plan.targets}


def start_reconciler(spec: ClusterSpec, *, app_name: str = "pavana", interval_s: float = 5.0):
    """Start (or find) the detached reconcile actor and its loop."""
    actor = ReconcilerActor.options(
        name=RECONCILER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(spec.model_dump(mode="json"), app_name, interval_s)
    ray.get(actor.start.remote())
    return actor


def stop_reconciler() -> None:
    try:
        ray.kill(ray.get_actor(RECONCILER_NAME, namespace=NAMESPACE))
    except ValueError:
        pass
