"""The reconcile loop: observe ▸ plan ▸ act, every few seconds (KubeRay-style).

Observe: the telemetry snapshot from Redis, the replicas Ray Serve runs, and each site's power
now (`controller.power`). Plan: one pure call, `autoscaler.round.plan_round`, which decides the
whole round (pool sizes, the fit under power, the power planner's routing plan and modes, every
decision with its reason) and hands back the memory for the next round. Act: write the plans
where Ray Serve's autoscaling hook (`autoscaler.serve_hook.FollowPlan`), the ingress's site
router and the replicas read them, and record every decision, for `pavana status` and the
dashboard. This module decides nothing itself; the simulator makes the same call on simulated
observations. Acting on the same plan twice changes nothing.

Beside the round, the loop watches the cluster's nodes: a site whose every node has left
(`router.site_view.lost_sites`) is recorded once, with why, as a decision for each of its
pools, and again when a node carrying it is back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import ray

from autoscaler.round import Observation, RoundMemory, RoundResult, plan_round, settings_from_spec
from autoscaler.round_log import dump_round
from cluster.records import Decision, Plan, pool_key
from cluster.spec import ClusterSpec
from cluster.telemetry import TelemetryStore
from controller.power import PowerSources
from router.site_view import SiteNodes, lost_sites, site_loss_decisions

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


def site_nodes(sites: list[str], nodes: list[dict[str, Any]], seen: dict[str, set[str]]) -> dict[str, SiteNodes]:
    """For each site, the Ray nodes carrying its resource, alive and gone, from `ray.nodes()`.
    Ray lists a node that left without its resources, so `seen` (site -> node ids) remembers
    which nodes carried each site while they were alive; it is updated here."""
    from controller.app import site_resource

    alive = {n["NodeID"] for n in nodes if n.get("Alive")}
    for node in nodes:
        for site in sites:
            if node.get("Alive") and node.get("Resources", {}).get(site_resource(site), 0) > 0:
                seen.setdefault(site, set()).add(node["NodeID"])
    return {site: SiteNodes(len(seen.get(site, set()) & alive), len(seen.get(site, set()) - alive)) for site in sites}


class Reconciler:
    def __init__(
        self,
        spec: ClusterSpec,
        *,
        app_name: str = "pavana",
        interval_s: float = 5.0,
        autoscaler: dict[str, Any] | None = None,
        planner: dict[str, Any] | None = None,
        record_path: str | Path | None = None,
    ) -> None:
        """`autoscaler` overrides the autoscaler's thresholds and profiled costs (cool-down, ...);
        `planner` the power planner's (`PlannerSettings`: forecaster, interval, ...);
        `record_path` appends every round (observation, memory, result) as a JSON line."""
        self.spec = spec
        self.app_name = app_name
        self.interval_s = interval_s
        self.store = TelemetryStore.from_spec(spec)
        self.settings = settings_from_spec(spec, autoscaler=autoscaler, planner=planner)
        self.power = PowerSources(spec)
        self.memory = RoundMemory()
        self.record_path = Path(record_path) if record_path else None
        self.last_result: RoundResult | None = None
        self.lost_sites: dict[str, str] = {}  # site -> why it is lost, as last recorded
        self.site_node_ids: dict[str, set[str]] = {}  # site -> the Ray nodes seen carrying it
        self._memory_restored = False

    @property
    def config(self):
        return self.settings.autoscaler

    @property
    def last_plan(self) -> Plan | None:
        return self.last_result.plan if self.last_result else None

    @property
    def routing(self):
        return self.memory.routing

    async def observe(self, now_s: float) -> Observation:
        snapshot = await self.store.snapshot()
        current = await asyncio.get_running_loop().run_in_executor(None, running_replicas, self.spec, self.app_name)
        return self.observation(snapshot, current, now_s)

    def observation(self, snapshot, current: dict[str, int], now_s: float) -> Observation:
        """An observation from a snapshot and replica counts: each site's power evaluated now."""
        return Observation(now_s=now_s, snapshot=snapshot, current=dict(current), power_w=self.power.available(snapshot, now_s))

    async def act(self, observation: Observation, result: RoundResult, site_decisions: tuple[Decision, ...] = ()) -> bool:
        """Publish the plans for the autoscaling hook, the site router and the replicas, and
        record each decision with its reason (the round's, and `site_decisions` on lost
        sites). False when Redis could not take them: then nothing was enacted and the round's
        memory is not kept."""
        routing = [result.routing] if result.replanned and result.routing else []
        power = self.power.published(observation.power_w, observation.now_s)
        decisions = (*result.decisions, *site_decisions)
        try:
            await self.store.write_batch([result.plan, *decisions, *power, *routing])
        except ConnectionError as exc:
            log.warning("reconcile: cannot write the plan (%s); Serve keeps its current sizes", exc)
            return False
        for d in decisions:
            log.info("%s %s: %d -> %d (%s)", d.kind, d.target, d.before, d.after, d.reason)
        return True

    async def restore_memory(self) -> None:
        """A restarted controller takes up the routing plan it finds in Redis, and reads when
        each pool last changed from the recorded decisions, so cool-downs still hold and a
        restart causes no burst of actions."""
        routing = await self.store.read_routing()
        last_change: dict[str, float] = {}
        last_growth: dict[str, float] = {}
        for decision in await self.store.recent_decisions(count=500):
            if decision.kind in ("scale_up", "scale_down"):
                last_change[decision.target] = max(last_change.get(decision.target, 0.0), decision.timestamp_s)
            if decision.kind == "scale_up":
                last_growth[decision.target] = max(last_growth.get(decision.target, 0.0), decision.timestamp_s)
        self.memory = RoundMemory(last_change_s=last_change, last_growth_s=last_growth, routing=routing,
                                  power_history=self.memory.power_history, started_s=self.memory.started_s)
        self._memory_restored = True

    def plan(self, observation: Observation) -> RoundResult:
        return plan_round(observation, self.memory, self.settings)

    async def round(self, observation: Observation, nodes: dict[str, SiteNodes] | None = None) -> RoundResult:
        """Plan and act on one observation; keep the new memory once the plan is published.
        With `nodes` (`site_nodes`), a site lost or back since the last round is recorded."""
        if not self._memory_restored:
            try:
                await self.restore_memory()
            except ConnectionError:
                log.warning("reconcile: cannot read the last plan and decisions yet; cool-downs start now")
        memory = self.memory
        result = self.plan(observation)
        lost = self.lost_sites if nodes is None else lost_sites(nodes, observation.snapshot.heartbeats)
        changes = site_loss_decisions(self.lost_sites, lost, self.spec.pools, observation.current, observation.now_s)
        if await self.act(observation, result, tuple(changes)):
            self.memory = result.memory
            self.lost_sites = lost
            self._record(observation, memory, result)
        self.last_result = result
        return result

    async def reconcile_once(self, now_s: float | None = None) -> Plan:
        now_s = now_s if now_s is not None else time.time()
        observation = await self.observe(now_s)
        names = [site.name for site in self.spec.sites]
        nodes = await asyncio.get_running_loop().run_in_executor(None, lambda: site_nodes(names, ray.nodes(), self.site_node_ids))
        result = await self.round(observation, nodes)
        return result.plan

    def _record(self, observation: Observation, memory: RoundMemory, result: RoundResult) -> None:
        if self.record_path is None:
            return
        try:
            with self.record_path.open("a") as f:
                f.write(dump_round(observation, memory, result) + "\n")
        except OSError as exc:  # a full disk must not stop the loop
            log.warning("reconcile: cannot record the round to %s (%s)", self.record_path, exc)

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

    def __init__(self, spec: dict[str, Any], app_name: str, interval_s: float, record_path: str | None = None) -> None:
        self.reconciler = Reconciler(ClusterSpec.parse(spec), app_name=app_name, interval_s=interval_s, record_path=record_path)
        self._thread = threading.Thread(target=lambda: asyncio.run(self.reconciler.run()), name="reconcile", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def last_plan(self) -> dict[str, Any] | None:
        plan = self.reconciler.last_plan
        return None if plan is None else {t.key: {"current": t.current, "desired": t.desired, "reason": t.reason} for t in plan.targets}


def start_reconciler(spec: ClusterSpec, *, app_name: str = "pavana", interval_s: float = 5.0, record_path: str | Path | None = None):
    """Start (or find) the detached reconcile actor and its loop; `record_path` (a path on the
    actor's node) receives every round as a JSON line."""
    actor = ReconcilerActor.options(
        name=RECONCILER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(spec.model_dump(mode="json"), app_name, interval_s, str(record_path) if record_path else None)
    if not ray.get(actor.alive.remote()):
        raise RuntimeError("the reconcile loop did not start; see the pavana-reconciler actor's log")
    return actor


def stop_reconciler() -> None:
    try:
        ray.kill(ray.get_actor(RECONCILER_NAME, namespace=NAMESPACE))
    except ValueError:
        pass
