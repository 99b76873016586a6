"""The reconcile loop: observe ▸ plan ▸ act, every few seconds (KubeRay-style).

Observe: the telemetry snapshot from Redis and the replicas Ray Serve runs. Plan, on two
timescales (Heron): every round the pure stage autoscaler (`autoscaler.policy.plan`) sizes
each pool and `fit_to_power` caps every site by the power it has now; every planning interval,
or at once when a site's power leaves what the last plan assumed, the power planner
(`autoscaler.power_planner`) re-divides each class's traffic between the sites and picks each
site's power modes from the power forecast. Act: write both plans where Ray Serve's
autoscaling hook (`autoscaler.serve_hook.FollowPlan`), the ingress's site router and the
replicas read them, and record every change as a decision with its reason, for `pavana status`
and the dashboard. Acting on the same plan twice changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any

import ray

from autoscaler.config import from_spec as autoscaler_config
from autoscaler.policy import plan as make_plan
from autoscaler.power_cap import fit_to_power
from autoscaler.power_planner import PlannerSettings, class_demands, needs_replan, plan_routing, planning_power, routing_decisions
from cluster.records import Decision, Plan, RoutingPlan, SitePower, TelemetrySnapshot, WireRecord, pool_key
from cluster.spec import ClusterSpec
from cluster.telemetry import TelemetryStore
from controller.power import PowerSources

log = logging.getLogger(__name__)

RECONCILER_NAME = "pavana-reconciler"
POWER_HISTORY = 120  # readings per site kept for the forecast (10 minutes at the default interval)
# A class may be sent to a site whose network latency is at most this share of its TTFT SLO.
LATENCY_SHARE_OF_TTFT = 0.25
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
        self,
        spec: ClusterSpec,
        *,
        app_name: str = "pavana",
        interval_s: float = 5.0,
        autoscaler: dict[str, Any] | None = None,
        planner: dict[str, Any] | None = None,
    ) -> None:
        """`autoscaler` overrides the autoscaler's thresholds and profiled costs (cool-down, ...);
        `planner` the power planner's (`PlannerSettings`: forecaster, interval, ...)."""
        self.spec = spec
        self.app_name = app_name
        self.interval_s = interval_s
        self.store = TelemetryStore.from_spec(spec)
        self.config = autoscaler_config(spec, **(autoscaler or {}))
        self.power = PowerSources(spec)
        self.required_stages = frozenset({"colocated"} if spec.topology == "colocated" else {"prefill", "decode"})
        self.last_change_s: dict[str, float] = {}
        self.last_plan: Plan | None = None
        self.planner = PlannerSettings(**(planner or {}))
        self.power_history: dict[str, deque[float]] = {s.name: deque(maxlen=POWER_HISTORY) for s in spec.sites}
        self.routing: RoutingPlan | None = None
        self._routing_loaded = False
        self._cooldowns_restored = False

    async def observe(self) -> tuple[TelemetrySnapshot, dict[str, int]]:
        snapshot = await self.store.snapshot()
        current = await asyncio.get_running_loop().run_in_executor(None, running_replicas, self.spec, self.app_name)
        return snapshot, current

    async def act(self, plan: Plan, power: list[SitePower] = (), routing: list[WireRecord] = ()) -> None:
        """Publish the plans for the autoscaling hook, the site router and the replicas, and
        record each change with its reason."""
        changes = plan.changes()
        try:
            await self.store.write_batch([plan, *changes, *power, *routing])
        except ConnectionError as exc:
            log.warning("reconcile: cannot write the plan (%s); Serve keeps its current sizes", exc)
            return
        for decision in changes:
            self.last_change_s[decision.target] = plan.timestamp_s
        for decision in [*changes, *(r for r in routing if isinstance(r, Decision))]:
            log.info("%s %s: %d -> %d (%s)", decision.kind, decision.target, decision.before, decision.after, decision.reason)

    async def plan_sites(self, snapshot: TelemetrySnapshot, now_s: float) -> list[WireRecord]:
        """The power planner's round: a new routing plan and its decisions when one is due,
        else nothing. A restarted controller takes up the plan it finds in Redis."""
        if not self._routing_loaded:
            try:
                self.routing = await self.store.read_routing()
                self._routing_loaded = True
            except ConnectionError:
                return []
        inputs = self.power.site_inputs(snapshot, now_s)
        if not inputs:
            return []
        power_now = {name: site.available_power_w for name, site in inputs.items()}
        why = needs_replan(self.routing, power_now, now_s, self.planner)
        planning = [
            replace(site, available_power_w=planning_power(site.available_power_w, self.power_history[name], self.planner))
            for name, site in inputs.items()
        ]
        for name, watts in power_now.items():
            self.power_history[name].append(watts)
        if why is None:
            return []
        classes = {c.name: 1.0 / (1 + c.priority) for c in self.spec.qos_classes}
        budgets = {c.name: LATENCY_SHARE_OF_TTFT * c.slo.ttft_s * 1000 for c in self.spec.qos_classes}
        demands = class_demands(snapshot.requests, classes, now_s, self.planner, latency_budget_ms=budgets)
        routing = plan_routing(planning, demands, now_s)
        decisions = routing_decisions(self.routing, routing, why, planning)
        self.routing = routing
        return [routing, *decisions]

    async def restore_cooldowns(self) -> None:
        """A restarted controller reads when each pool last changed from the recorded
        decisions, so the cool-down still holds and a restart causes no burst of actions."""
        for decision in await self.store.recent_decisions(count=500):
            if decision.kind in ("scale_up", "scale_down"):
                self.last_change_s[decision.target] = max(self.last_change_s.get(decision.target, 0.0), decision.timestamp_s)
        self._cooldowns_restored = True

    async def reconcile_once(self, now_s: float | None = None) -> Plan:
        """Size each pool for its demand, then fit every site under the power it has now."""
        now_s = now_s if now_s is not None else time.time()
        if not self._cooldowns_restored:
            try:
                await self.restore_cooldowns()
            except ConnectionError:
                log.warning("reconcile: cannot read past decisions yet; cool-downs start now")
        snapshot, current = await self.observe()
        plan = make_plan(snapshot, self.config, current, now_s, self.last_change_s)
        routing: list[WireRecord] = []
        if not snapshot.stale:  # no action on stale data, power included
            plan = fit_to_power(plan, self.power.site_inputs(snapshot, now_s), self.required_stages)
            routing = await self.plan_sites(snapshot, now_s)
        await self.act(plan, self.power.published(snapshot, now_s), routing)
        self.last_plan = plan
        return plan

    async def run(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except Exception:  # the loop outlives one bad round; the next one retries
                log.exception("reconcile round failed")
            await asyncio.sleep(self.interval_s)


@ray.remote(num_cpus=0, max_restarts=-1)
class ReconcilerActor:
    """The loop as a detached Ray actor, so it lives with the cluster, not with `pavana up`.

    The loop starts in the constructor, on a thread of its own with its own event loop, so an
    actor that Ray restarts after a crash (`max_restarts=-1`) resumes reconciling by itself;
    it then takes up the routing plan and the cool-downs it finds in Redis."""

    def __init__(self, spec: dict[str, Any], app_name: str, interval_s: float) -> None:
        self.reconciler = Reconciler(ClusterSpec.parse(spec), app_name=app_name, interval_s=interval_s)
        self._thread = threading.Thread(target=lambda: asyncio.run(self.reconciler.run()), name="reconcile", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def last_plan(self) -> dict[str, Any] | None:
        plan = self.reconciler.last_plan
        return None if plan is None else {t.key: {"current": t.current, "desired": t.desired, "reason": t.reason} for t in plan.targets}


def start_reconciler(spec: ClusterSpec, *, app_name: str = "pavana", interval_s: float = 5.0):
    """Start (or find) the detached reconcile actor and its loop."""
    actor = ReconcilerActor.options(
        name=RECONCILER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(spec.model_dump(mode="json"), app_name, interval_s)
    if not ray.get(actor.alive.remote()):
        raise RuntimeError("the reconcile loop did not start; see the pavana-reconciler actor's log")
    return actor


def stop_reconciler() -> None:
    try:
        ray.kill(ray.get_actor(RECONCILER_NAME, namespace=NAMESPACE))
    except ValueError:
        pass
