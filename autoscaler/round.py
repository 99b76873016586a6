"""One control round, composed once: everything the controller decides every few seconds, as
one pure call that the live reconcile loop and the simulator both make (DESIGN.md, "compose
once").

    plan_round(observation, memory, settings) -> RoundResult

In order:
1. Measured inputs: prompt tokens one replica prefills and output tokens it decodes per
   full-clock second of doing each, and seconds to encode one image, from the heartbeats; the settings' profiled constants only until
   telemetry has measured them (a cold start).
2. The stage autoscaler (`policy.plan`) sizes every pool@site for its demand.
3. `power_cap.fit_to_power` caps each site by the power it has now (Heron's fast reaction)
   and its installed replicas, allocating what fits jointly across the site's pools by each
   pool's unmet need (`policy.needs`), so stages stop taking GPUs from each other in turn.
4. The power planner (Heron's slow timescale), when `needs_replan` says one is due (no plan
   yet, the planning interval is up, or a site's power left what the last plan assumed):
   plan on the lower of each site's power now and its forecast, measure each class's demand,
   solve for traffic shares and each site's power-mode mix.
5. Mode assignment: which mode each live replica runs in (`cluster.power_modes`), ranked by
   the names the replicas themselves rank by, so the record says what every replica enacts.
6. Decisions with their reasons: every size change, every share that moved, every change of
   a site's reduced-mode replicas.

The result carries the new memory (cool-downs, the routing plan in force, power readings for
the forecast) as plain data; the caller keeps it for the next round. Nothing here reads a
clock, Redis, Ray or torch: `now_s` is in the observation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from autoscaler.config import AutoscalerConfig
from autoscaler.config import from_spec as autoscaler_config
from autoscaler.policy import needs as pool_needs
from autoscaler.policy import plan as size_pools
from autoscaler.power_cap import fit_to_power
from autoscaler.power_planner import (
    PlannerSettings,
    class_demands,
    needs_replan,
    plan_routing,
    planning_power,
    routing_decisions,
)
from autoscaler.site_planner import SiteInput
from cluster.power_modes import Mode, assign_modes
from cluster.records import Decision, Plan, PoolTarget, ReplicaHeartbeat, RoutingPlan, TelemetrySnapshot

if TYPE_CHECKING:
    from cluster.spec import ClusterSpec

# A class may be sent to a site whose network latency is at most this share of its TTFT SLO.
LATENCY_SHARE_OF_TTFT = 0.25
# Power readings per site kept for the forecast (10 minutes at a 5 s round).
POWER_HISTORY = 120


@dataclass(frozen=True, slots=True)
class SiteSettings:
    name: str
    modes: tuple[Mode, ...]
    max_replicas: int
    latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class RoundSettings:
    """What a round needs to know of the cluster besides what it observes. `autoscale` and
    `power_aware` are the simulator's ablations; the live cluster runs with both."""

    autoscaler: AutoscalerConfig
    planner: PlannerSettings
    sites: tuple[SiteSettings, ...]
    required_stages: frozenset[str]
    class_weights: dict[str, float]  # class -> weight in the power planner (priority: higher counts more)
    latency_budget_ms: dict[str, float]  # class -> network latency a site may add
    autoscale: bool = True
    power_aware: bool = True
    power_history: int = POWER_HISTORY

    def site(self, name: str) -> SiteSettings:
        return next(s for s in self.sites if s.name == name)


@dataclass(frozen=True, slots=True)
class Observation:
    """What the controller sees at `now_s`: telemetry, the replicas each pool@site runs, and the
    power each site may draw now (sites whose power is not known yet are absent)."""

    now_s: float
    snapshot: TelemetrySnapshot
    current: dict[str, int]
    power_w: dict[str, float]


@dataclass(frozen=True, slots=True)
class RoundMemory:
    """What one round hands to the next."""

    last_change_s: dict[str, float] = field(default_factory=dict)  # pool@site -> when it last changed size
    last_growth_s: dict[str, float] = field(default_factory=dict)  # pool@site -> when it last grew
    # The first round's time: a pool not changed since counts as changed then, so cool-downs
    # hold from the start and no pool shrinks for want of telemetry it has not had time to send.
    started_s: float | None = None
    routing: RoutingPlan | None = None  # the routing plan in force
    power_history: dict[str, tuple[float, ...]] = field(default_factory=dict)  # site -> readings, oldest first


@dataclass(frozen=True, slots=True)
class Measured:
    """Costs measured from heartbeats this round; None where telemetry could not measure them
    (then the profiled default stands in, and `source` says so)."""

    prefill_tokens_per_s: float | None
    decode_tokens_per_s: float | None
    encode_s_per_image: float | None

    def describe(self, settings: RoundSettings) -> str:
        def one(value: float | None, default: float, unit: str) -> str:
            return f"{value:.0f} {unit} (measured)" if value else f"{default:.0f} {unit} (profiled)"

        image = f"{self.encode_s_per_image:.3f} s per image (measured)" if self.encode_s_per_image else (
            f"{settings.autoscaler.encode_s_per_image:.3f} s per image (profiled)")
        return (f"{one(self.prefill_tokens_per_s, settings.planner.prefill_tokens_per_s, 'prefill tokens/s')}; "
                f"{one(self.decode_tokens_per_s, settings.planner.decode_tokens_per_s, 'decode tokens/s')}; {image}")


@dataclass(frozen=True, slots=True)
class RoundResult:
    plan: Plan  # desired replicas per pool@site, each with its reason
    routing: RoutingPlan | None  # the routing plan in force after this round
    replanned: str | None  # why the routing plan was remade this round; None when it was kept
    decisions: tuple[Decision, ...]
    replica_modes: dict[str, str]  # replica rank id -> the power mode it runs in
    measured: Measured
    memory: RoundMemory


def plan_round(observation: Observation, memory: RoundMemory, settings: RoundSettings) -> RoundResult:
    now = observation.now_s
    snapshot = observation.snapshot
    fresh = _fresh_heartbeats(snapshot, settings, now)
    measured = measure(fresh, settings)
    config = _with_measured(settings.autoscaler, measured)

    started = now if memory.started_s is None else memory.started_s
    if settings.autoscale:
        since = {**{key: started for key in observation.current}, **memory.last_change_s}
        plan = size_pools(snapshot, config, observation.current, now, since)
    else:
        plan = _hold(observation.current, settings, now)

    routing, why, routing_changes = memory.routing, None, ()
    history = dict(memory.power_history)
    if settings.power_aware and not snapshot.stale:  # no action on stale data, power included
        inputs = _site_inputs(observation.power_w, settings)
        needs = pool_needs(snapshot, config, now) if settings.autoscale else None
        # A pool that grew within its cool-down keeps those replicas against another pool's ask
        # (only power may take them), so two pools do not trade replicas back and forth.
        cooling = {key: n for key, n in observation.current.items()
                   if now - memory.last_growth_s.get(key, -float("inf")) < config.cooldown_s}
        plan = fit_to_power(plan, inputs, settings.required_stages, needs, config.warm_replica_bonus, cooling)
        if inputs:
            routing, why, routing_changes, history = _plan_sites(
                snapshot, inputs, memory, settings, measured, now
            )

    changes = plan.changes()
    last_change, last_growth = dict(memory.last_change_s), dict(memory.last_growth_s)
    for decision in changes:
        last_change[decision.target] = now
        if decision.kind == "scale_up":
            last_growth[decision.target] = now
    modes = _replica_modes(fresh, routing, settings) if settings.power_aware else {}
    return RoundResult(
        plan=plan,
        routing=routing,
        replanned=why,
        decisions=(*changes, *routing_changes),
        replica_modes=modes,
        measured=measured,
        memory=RoundMemory(last_change_s=last_change, last_growth_s=last_growth, routing=routing, power_history=history,
                           started_s=started),
    )


# -- measured inputs ------------------------------------------------------------------------------
def measure(heartbeats: tuple[ReplicaHeartbeat, ...], settings: RoundSettings) -> Measured:
    """Prefill and decode tokens per full-clock second of doing each, over the language-model
    replicas (`workers.engine.step_rates`), and busy seconds per image over the vision
    replicas; each only from replicas busy enough that the ratio means something."""
    floor = settings.autoscaler.min_busy_for_measurement
    llm = [h for h in heartbeats if h.stage != "vision" and h.busy_fraction >= floor]
    vision = [h for h in heartbeats if h.stage == "vision" and h.busy_fraction >= floor and h.images_per_s > 0]
    images = sum(h.images_per_s for h in vision)
    return Measured(
        prefill_tokens_per_s=_mean_full_clock([(h, h.prefill_tokens_per_busy_s) for h in llm], settings),
        decode_tokens_per_s=_mean_full_clock([(h, h.decode_tokens_per_busy_s) for h in llm], settings),
        encode_s_per_image=sum(h.busy_fraction * _throughput_fraction(h, settings) for h in vision) / images if images else None,
    )


def _mean_full_clock(rates: list[tuple[ReplicaHeartbeat, float]], settings: RoundSettings) -> float | None:
    full = [rate / _throughput_fraction(h, settings) for h, rate in rates if rate > 0]
    return sum(full) / len(full) if full else None


def _throughput_fraction(h: ReplicaHeartbeat, settings: RoundSettings) -> float:
    """A replica in a reduced power mode does less per busy second; its measurement is scaled
    back to full clock, which is what the planner's costs are counted in."""
    try:
        modes = settings.site(h.site).modes
    except StopIteration:
        return 1.0
    return next((m.throughput_fraction for m in modes if m.name == h.power_mode), 1.0)


def _with_measured(config: AutoscalerConfig, measured: Measured) -> AutoscalerConfig:
    if measured.encode_s_per_image is None:
        return config
    return replace(config, encode_s_per_image=measured.encode_s_per_image)


# -- the pieces of a round --------------------------------------------------------------------------
def _fresh_heartbeats(snapshot: TelemetrySnapshot, settings: RoundSettings, now: float) -> tuple[ReplicaHeartbeat, ...]:
    limit = settings.autoscaler.max_heartbeat_age_s
    return tuple(h for h in snapshot.heartbeats if now - h.timestamp_s <= limit)


def _hold(current: Mapping[str, int], settings: RoundSettings, now: float) -> Plan:
    """Every pool stays at its size (autoscaling off)."""
    targets = []
    for site in settings.sites:
        for pool in settings.autoscaler.pools:
            n = current.get(f"{pool}@{site.name}", 0)
            targets.append(PoolTarget(pool, site.name, n, n, f"hold at {n}: autoscaling is off"))
    return Plan(tuple(targets), now)


def _site_inputs(power_w: Mapping[str, float], settings: RoundSettings) -> dict[str, SiteInput]:
    return {
        s.name: SiteInput(s.name, power_w[s.name], s.modes, s.max_replicas, s.latency_ms)
        for s in settings.sites
        if s.name in power_w
    }


def _plan_sites(
    snapshot: TelemetrySnapshot,
    inputs: dict[str, SiteInput],
    memory: RoundMemory,
    settings: RoundSettings,
    measured: Measured,
    now: float,
) -> tuple[RoutingPlan | None, str | None, tuple[Decision, ...], dict[str, tuple[float, ...]]]:
    """The power planner's part: a new routing plan and its decisions when one is due."""
    power_now = {name: site.available_power_w for name, site in inputs.items()}
    why = needs_replan(memory.routing, power_now, now, settings.planner)
    planning = [
        replace(site, available_power_w=planning_power(site.available_power_w, memory.power_history.get(name, ()), settings.planner))
        for name, site in inputs.items()
    ]
    history = dict(memory.power_history)
    for name, watts in power_now.items():
        history[name] = (*history.get(name, ()), watts)[-settings.power_history :]
    if why is None:
        return memory.routing, None, (), history
    demands = class_demands(
        snapshot.requests, settings.class_weights, now, settings.planner,
        prefill_tokens_per_s=measured.prefill_tokens_per_s, decode_tokens_per_s=measured.decode_tokens_per_s,
        latency_budget_ms=settings.latency_budget_ms,
    )
    routing = plan_routing(planning, demands, now)
    decisions = routing_decisions(memory.routing, routing, why, planning)
    return routing, why, tuple(decisions), history


def _replica_modes(heartbeats: tuple[ReplicaHeartbeat, ...], routing: RoutingPlan | None, settings: RoundSettings) -> dict[str, str]:
    """The mode each live replica takes under the plan in force: the same ranking every replica
    computes for itself (`mode_for_replica`)."""
    if routing is None:
        return {}
    modes: dict[str, str] = {}
    for site in settings.sites:
        counts = routing.modes.get(site.name)
        if counts is None or not site.modes:
            continue
        ids = [h.rank_id for h in heartbeats if h.site == site.name]
        modes.update({rid: mode.name for rid, mode in assign_modes(ids, site.modes, counts).items()})
    return modes


# -- settings from a cluster spec ---------------------------------------------------------------------
def settings_from_spec(
    spec: ClusterSpec,
    *,
    autoscaler: Mapping[str, Any] | None = None,
    planner: Mapping[str, Any] | None = None,
    autoscale: bool = True,
    power_aware: bool = True,
) -> RoundSettings:
    """The one way both the reconcile loop and the simulator turn a spec into round settings,
    so that the same spec plans the same way in both. `autoscaler` and `planner` override the
    thresholds and profiled costs (`AutoscalerConfig`, `PlannerSettings`)."""
    sites = tuple(
        SiteSettings(
            s.name, tuple(Mode(m.name, m.power_w, m.throughput_fraction) for m in s.power_modes), s.max_replicas, s.latency_ms
        )
        for s in spec.sites
    )
    return RoundSettings(
        autoscaler=autoscaler_config(spec, **dict(autoscaler or {})),
        planner=PlannerSettings(**dict(planner or {})),
        sites=sites,
        required_stages=frozenset({"colocated"} if spec.topology == "colocated" else {"prefill", "decode"}),
        class_weights={c.name: 1.0 / (1 + c.priority) for c in spec.qos_classes},
        latency_budget_ms={c.name: LATENCY_SHARE_OF_TTFT * c.slo.ttft_s * 1000 for c in spec.qos_classes},
        autoscale=autoscale,
        power_aware=power_aware,
    )

