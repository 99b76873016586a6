"""The simulated cluster: sites with their power, pools of simulated replicas, and the
router, admission and control policies that Pavana runs — the same functions, fed from the
simulation's state instead of Redis and Ray.

- Arrivals pass QoS admission (`router.admission.AdmissionControl`, as one ingress replica
  admits), pick a site (`router.site_router.choose_site` over the planned shares and each
  site's power), then a replica of the entry stage (`router.replica_choice`). Sequences carry
  their class's priority and first-token deadline, so the engine's scheduler orders them as it
  does live.
- Stages follow the topology: images go to the vision pool when there is one (otherwise a
  colocated replica encodes them inside its iterations), prompts to prefill or colocated
  replicas, prefilled requests to decode replicas after their KV crosses the network.
- Every `control_interval_s` the controller observes (heartbeats with busy fraction, tokens/s
  and images/s over the interval, the request records of the window, replicas per pool, each
  site's power now) and makes the live reconcile loop's one call,
  `autoscaler.round.plan_round`; then it acts: resizes pools (new replicas start cold), follows
  the routing plan's shares, and runs every replica in the power mode the round assigned it.
- Power is physical: when a site's power falls below what its replicas draw, the site's
  battery rides through `ride_through_s`, then replicas go dark and their requests are lost.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from autoscaler.round import Observation, RoundResult, settings_from_spec
from cluster.power_modes import Mode, full_mode, mode_for_replica
from cluster.power_trace import PowerTrace, power_at
from cluster.records import ReplicaHeartbeat, RequestRecord, TelemetrySnapshot, pool_key, rank_id
from cluster.spec import REPLAYED_POWER, ClusterSpec, ConstantPower
from router.admission import AdmissionControl, Overloaded
from router.queue_wait import QueueWaits
from router.replica_choice import ReplicaLoad, rank_for_decode
from router.site_router import SPILL_SHARE_OF_TTFT, SiteLoad, SitePower, choose_site
from simulator.control import SimController
from simulator.cost_model import BatchShape, CostModel, Network
from simulator.events import EventLoop, Kind
from simulator.percentile import percentile_sorted
from simulator.prefill_index import LeastQueuedReplicas
from simulator.replica import Accounting, BaseReplica, SimReplica, VisionReplica
from simulator.request import SimRequest
from simulator.workload import TraceRequest
from workers.engine.config import EngineConfig
from workers.engine.step_rates import rate


ROUTINGS = ("blended", "planned", "least_loaded", "static")


@dataclass(frozen=True)
class SimOptions:
    cold_start_s: float = 30.0
    control_interval_s: float = 5.0
    autoscale: bool = True
    power_aware: bool = True  # fit pools under power, plan sites and power modes, skip overdrawn sites
    # blended: the live site router (planned shares, power, and each site's live load); planned:
    # shares and power only; least_loaded: any site's least-loaded replica (power-oblivious);
    # static: fixed shares by installed replicas, no fail-over (per-site serving, Heron's baseline)
    routing: str = "blended"
    power_interval_s: float = 60.0  # how often a trace-powered site's power is re-read
    ride_through_s: float = 30.0  # a site's battery carries an overdraw this long, then replicas go dark
    sample_interval_s: float = 10.0
    backlog_timeout_s: float = 120.0  # a request waiting this long for any replica of its stage fails
    tokens_per_image: int = 576
    # Monolithic replicas encode at most this many image tokens per iteration (whole requests,
    # at least one); None: vLLM V1's rule, max(the iteration's token budget, one image's tokens);
    # 0: every queued image at once (vLLM V0).
    encoder_budget_tokens: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = False  # traces carry no token contents to share
    autoscaler_overrides: dict = field(default_factory=dict)  # AutoscalerConfig fields
    planner_overrides: dict = field(default_factory=dict)  # PlannerSettings fields
    qos_admission: bool = True  # admit as one ingress replica would (429s recorded as rejected)
    # Steps that only decode taken in one event each run (`simulator.decode_run`); the same
    # results either way, off only to check that.
    decode_runs: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing: must be one of {ROUTINGS}, got {self.routing!r}")


@dataclass(slots=True)
class SiteState:
    name: str
    latency_s: float
    modes: tuple[Mode, ...]
    max_replicas: int
    power_fn: Callable[[float], float]
    available_w: float = math.inf
    replicas: dict[str, list[BaseReplica]] = field(default_factory=lambda: defaultdict(list))

    def alive(self, pool: str | None = None) -> list[BaseReplica]:
        pools = [pool] if pool else list(self.replicas)
        return [r for p in pools for r in self.replicas.get(p, ()) if r.alive]

    @property
    def drawn_w(self) -> float:
        return sum(r.power_w for r in self.alive())


class SimCluster:
    def __init__(self, spec: ClusterSpec, cost: CostModel, network: Network, options: SimOptions = SimOptions()) -> None:
        self.spec = spec
        self.cost = cost
        self.network = network
        self.options = options
        self.loop = EventLoop()
        self.rng = np.random.default_rng(options.seed)
        e = spec.engine
        max_len = options.max_model_len or spec.model.max_model_len
        self.max_model_len = max_len or e.num_kv_blocks * e.block_size
        self.engine_configs = {
            stage: EngineConfig(policy=e.policy, mode="colocated" if stage == "colocated" else stage, chunk_size=e.chunk_size,
                                max_num_seqs=e.max_num_seqs, block_size=e.block_size, num_kv_blocks=e.num_kv_blocks,
                                enable_prefix_caching=options.enable_prefix_caching, tbt_target_s=spec.tbt_target_s)
            for stage in ("colocated", "prefill", "decode")
        }
        self.sites: dict[str, SiteState] = {s.name: self._site_state(s) for s in spec.sites}
        self.pools = dict(spec.pools)
        self.entry_pool = "colocated" if spec.topology == "colocated" else "prefill"
        # The cost model's own costs are the profiled defaults a cold start plans with; once
        # replicas have worked, the round measures them from heartbeats as it does live.
        autoscaler = {"encode_s_per_image": cost.encode_time(1), "cold_start_s": options.cold_start_s,
                      **options.autoscaler_overrides}
        self.controller = SimController(settings_from_spec(spec, autoscaler=autoscaler, planner=options.planner_overrides,
                                                           autoscale=options.autoscale, power_aware=options.power_aware))
        self.autoscaler_config = self.controller.settings.autoscaler
        self.admission = AdmissionControl.from_spec(spec)
        self.queue_waits = QueueWaits()
        self.classes = {c.name: c for c in spec.qos_classes}
        chunk = spec.engine.chunk_size
        self._prefill_rate = chunk / cost.batch_time(BatchShape(chunk, 0, chunk * (chunk + 1) / 2, 0, 1))
        self.shares: dict[str, dict[str, float]] = {c.name: {s: 1.0 for s in self.sites} for c in spec.qos_classes}
        self.requests: list[SimRequest] = []
        self.backlog: dict[tuple[str, str], deque[SimRequest]] = defaultdict(deque)
        # (pool, site) -> its accepting LLM replicas by load, for the prefill ranking's first
        self._least_queued: dict[tuple[str, str], LeastQueuedReplicas] = defaultdict(LeastQueuedReplicas)
        self.records: deque[RequestRecord] = deque()
        self.last_change: dict[str, float] = {}
        self.samples: list[dict] = []
        self.decisions: list[dict] = []
        self.replica_seconds: dict[str, float] = defaultdict(float)
        self.energy_j: dict[str, float] = defaultdict(float)
        self.power_cuts = 0
        self._ids = 0
        self._outstanding = 0
        self._arrivals_left = 0
        self._last_sample = 0.0
        self._last_control = 0.0
        self._all_replicas: list[BaseReplica] = []
        self._done = False
        self._cut_pending: set[str] = set()
        for site in self.sites.values():
            site.available_w = site.power_fn(0.0)
            for name, pool in self.pools.items():
                for _ in range(pool.initial_replicas):
                    self._start_replica(name, site, cold=False)

    # -- construction ---------------------------------------------------------------------------------
    def _site_state(self, s) -> SiteState:
        modes = tuple(Mode(m.name, m.power_w, m.throughput_fraction) for m in s.power_modes)
        if isinstance(s.power, ConstantPower):
            watts = s.power.power_w
            fn = lambda t, w=watts: w  # noqa: E731
        elif isinstance(s.power, REPLAYED_POWER):
            trace = PowerTrace.from_source(s.power)
            start, speed, scale = trace.start_index(s.power.start), s.power.speed, s.power.scale_w
            fn = lambda t: power_at(trace, start_index=start, speed=speed, scale_w=scale, elapsed_s=t)  # noqa: E731
        else:
            raise ValueError(f"sites.{s.name}.power: the simulator replays constant, trace or wind-model power, not {s.power.kind!r}")
        return SiteState(s.name, s.latency_ms / 1e3, modes, s.max_replicas, fn)

    def _start_replica(self, pool: str, site: SiteState, *, cold: bool) -> BaseReplica:
        self._ids += 1
        stage = self.pools[pool].stage
        mode = full_mode(site.modes)
        common = dict(replica_id=f"{pool}@{site.name}#{self._ids}", stage=stage, site=site.name, loop=self.loop,
                      cost=self.cost, sink=self, mode=mode.name, power_w=mode.power_w, speed=mode.throughput_fraction,
                      started_s=self.loop.now, ready=not cold)
        if stage == "vision":
            replica: BaseReplica = VisionReplica(**common)
        else:
            budget = self.options.encoder_budget_tokens
            if budget is None:
                budget = max(self.spec.engine.chunk_size, self.options.tokens_per_image)
            replica = SimReplica(**common, engine=self.engine_configs[stage], max_model_len=self.max_model_len,
                                 encodes_images="vision" not in self.pools, encoder_budget_tokens=budget,
                                 decode_runs=self.options.decode_runs)
            replica.on_load_change = self._least_queued[(pool, site.name)].changed
        replica.rank_id = rank_id(pool, site.name, replica.replica_id)  # its name among the site's replicas, for power modes
        site.replicas[pool].append(replica)
        self._all_replicas.append(replica)
        if cold:
            self.loop.after(self.options.cold_start_s, Kind.SCALE, self._ready, replica)
        else:
            self._accepting(pool, replica)
        return replica

    def _accepting(self, pool: str, replica: BaseReplica) -> None:
        """A replica takes work from now on: LLM replicas join their pool's index by load."""
        if isinstance(replica, SimReplica):
            self._least_queued[(pool, replica.site)].add(replica)

    def _ready(self, replica: BaseReplica) -> None:
        if not replica.alive:
            return
        replica.ready = True
        site = self.sites[replica.site]
        self._follow_modes(site, self.rounds[-1].replica_modes if self.rounds else {})
        pool = self._pool_of(replica)
        self._accepting(pool, replica)
        self._flush_backlog(pool, replica.site)
        replica._kick()

    def _pool_of(self, replica: BaseReplica) -> str:
        return next(name for name, p in self.pools.items() if p.stage == replica.stage)

    # -- running ---------------------------------------------------------------------------------------
    def run(self, trace: Sequence[TraceRequest], *, drain_s: float = 900.0,
            on_advance: Callable[[float], None] | None = None) -> list[SimRequest]:
        """Replay the trace; stop when every request has finished (or `drain_s` after the last arrival)."""
        self._arrivals_left = len(trace)
        for t in trace:
            self.loop.at(t.arrival_s, Kind.ARRIVAL, self._arrive, t)
        self._outstanding = len(trace)
        self.loop.at(0.0, Kind.CONTROL, self._control)
        self.loop.at(0.0, Kind.SAMPLE, self._sample)
        self.loop.at(0.0, Kind.POWER, self._power_tick)
        end = (trace[-1].arrival_s if trace else 0.0) + drain_s
        self.loop.run(end, on_advance)
        for r in self._all_replicas:
            r.sync()
        self._sample()
        for req in self.requests:
            if req.outcome is None:
                req.outcome, req.reason = "unfinished", f"still running {drain_s:g} s after the last arrival"
        return self.requests

    def _check_done(self) -> None:
        self._done = self._arrivals_left == 0 and self._outstanding == 0

    # -- arrivals and routing ------------------------------------------------------------------------
    def _arrive(self, t: TraceRequest) -> None:
        self._arrivals_left -= 1
        req = SimRequest(t, image_tokens=t.num_images * self.options.tokens_per_image)
        self.requests.append(req)
        qos = self.classes.get(t.qos_class)
        if qos is None:
            return self._fail(req, "rejected", f"unknown QoS class {t.qos_class!r}")
        req.priority, req.deadline_s = qos.priority, t.arrival_s + qos.slo.ttft_s  # as the ingress stamps them
        if req.prompt_tokens + t.output_tokens > self.max_model_len:
            return self._fail(req, "rejected", f"{req.prompt_tokens} + {t.output_tokens} tokens exceed the context of {self.max_model_len}")
        if self.options.qos_admission:
            try:
                self.admission.admit(t.qos_class, self.queue_waits.wait_s(t.qos_class, self.loop.now))
            except Overloaded as exc:
                return self._fail(req, "rejected", exc.message)
            req.admitted = True
            key = str(id(req))
            self.queue_waits.started(key, t.qos_class, self.loop.now)
            req.on_first_token = lambda now, key=key: self.queue_waits.first_token(key, now)
        site = self._choose_site(req)
        if site is None:
            return self._fail(req, "rejected", "no site has power for new work")
        req.site = site.name
        req.net_s = 2 * site.latency_s
        if t.num_images and "vision" in self.pools:
            self._route("vision", site, req)
        else:
            self._route(self.entry_pool, site, req)

    def _choose_site(self, req: SimRequest) -> SiteState | None:
        if len(self.sites) == 1:
            return next(iter(self.sites.values()))
        routing = self.options.routing
        if routing == "least_loaded":
            return self._least_loaded_site()
        if routing == "static":
            return self._static_site()
        power = {name: SitePower(s.available_w, s.drawn_w, s.latency_s * 1e3) for name, s in self.sites.items()
                 if s.alive(self.entry_pool)}
        qos = req.trace.qos_class
        if routing == "blended":
            load = {name: self._site_load(self.sites[name]) for name in power}
            spill = SPILL_SHARE_OF_TTFT * self.classes[qos].slo.ttft_s
            choice = choose_site(qos, self.shares, power, float(self.rng.random()), load=load,
                                 second=float(self.rng.random()), spill_wait_s=spill)
        else:
            choice = choose_site(qos, self.shares, power, float(self.rng.random()))
        return self.sites[choice.site] if choice.site else None

    def _site_load(self, site: SiteState) -> SiteLoad:
        """What a live site's heartbeats say of its entry stage: queued prefill tokens over the
        replicas' throughput (the cost model's full-chunk rate at each replica's clock)."""
        replicas = [r for r in site.replicas.get(self.entry_pool, ()) if r.accepting]
        if not replicas:  # only replicas still starting: nothing is served before their cold start ends
            return SiteLoad(wait_s=self.options.cold_start_s)
        rate = sum(r.speed for r in replicas) * self._prefill_rate
        queued = sum(r.queued_prefill_tokens for r in replicas)
        holders = [r for p in ("decode", "colocated") for r in site.replicas.get(p, ()) if r.accepting]
        for r in holders:
            r.sync()
        kv = sum(1 - r.block_manager.num_free_blocks / r.block_manager.num_blocks for r in holders) / len(holders) if holders else 0.0
        return SiteLoad(wait_s=queued / rate if rate > 0 else 0.0, kv_occupancy=kv)

    def _static_site(self) -> SiteState | None:
        """Each site serves a fixed share of the traffic (its installed replicas' share), with no
        fail-over: a site without powered replicas loses its share (per-site serving)."""
        names = list(self.sites)
        weights = np.array([self.sites[n].max_replicas for n in names], dtype=float)
        site = self.sites[names[int(self.rng.choice(len(names), p=weights / weights.sum()))]]
        powered = site.available_w > 0 and site.drawn_w <= site.available_w and site.alive(self.entry_pool)
        return site if powered else None

    def _least_loaded_site(self) -> SiteState | None:
        """Power-oblivious: the least-loaded accepting replica of the entry pool, at any site."""
        replicas = [r for s in self.sites.values() for r in s.alive(self.entry_pool) if r.accepting]
        if not replicas:
            return None
        best = min(replicas, key=lambda r: (r.queued_prefill_tokens, r.num_requests, r.replica_id))
        return self.sites[best.site]

    def _route(self, pool: str, site: SiteState, req: SimRequest) -> None:
        stage = self.pools[pool].stage
        if stage == "vision":
            replicas = [r for r in site.replicas.get(pool, ()) if r.accepting]
            replica = min(replicas, key=lambda r: (r.queued_images, r.replica_id)) if replicas else None
        else:
            replica = self._rank_prefill(pool, site, req)
        if replica is None:
            if not site.alive(pool):
                return self._fail(req, "failed", f"no {pool} replica at {site.name}")
            self.backlog[(pool, site.name)].append(req)  # replicas are starting: the router's queue holds it
            return
        if stage != "vision" and not replica.fits(req):
            return self._fail(req, "rejected", "prompt does not fit the replica's context")
        req.stages.append(stage)
        replica.add(req)

    def _rank_prefill(self, pool: str, site: SiteState, req: SimRequest) -> SimReplica | None:
        """`rank_for_prefill`'s first among the pool's accepting replicas at the site (None:
        none accepts). Simulated prompts have no prefix hashes, so that is the least queued
        replica, kept by an index (`simulator.prefill_index`) instead of ranking them all."""
        return self._least_queued[(pool, site.name)].best()

    def _flush_backlog(self, pool: str, site_name: str) -> None:
        queue = self.backlog.get((pool, site_name))
        while queue:
            req = queue.popleft()
            if req.outcome is None:
                self._route(pool, self.sites[site_name], req)

    # -- what replicas report -------------------------------------------------------------------------
    def on_finished(self, req: SimRequest, now_s: float, replica: BaseReplica) -> None:
        req.finish_s = now_s
        req.outcome = "ok"
        self._settle(req)

    def on_encoded(self, req: SimRequest, now_s: float, replica: BaseReplica) -> None:
        self._route(self.entry_pool, self.sites[replica.site], req)

    def on_handoff(self, req: SimRequest, now_s: float, replica: BaseReplica) -> None:
        site = self.sites[replica.site]
        target = self._decode_site(site)
        if target is None:
            return self._fail(req, "failed", f"no decode replica for the hand-off from {site.name}")
        same = target is site
        extra = abs(target.latency_s - site.latency_s) if not same else 0.0
        delay = self.network.transfer_time(self.cost.kv_bytes_per_token * req.prompt_tokens, same, extra)
        self.loop.after(delay, Kind.HANDOFF, self._deliver, req, target)

    def _decode_site(self, site: SiteState) -> SiteState | None:
        """The prefill's own site when it has decode replicas; else the nearest that has."""
        if site.alive("decode"):
            return site
        others = sorted((s for s in self.sites.values() if s.alive("decode")), key=lambda s: abs(s.latency_s - site.latency_s))
        return others[0] if others else None

    def _deliver(self, req: SimRequest, site: SiteState) -> None:
        if req.outcome is not None:
            return
        replicas = [r for r in site.replicas.get("decode", ()) if r.accepting]
        for r in replicas:
            r.sync()
        if not replicas:
            if site.alive("decode"):
                self.backlog[("decode", site.name)].append(req)
                return
            return self._fail(req, "failed", f"decode replicas at {site.name} went away during the hand-off")
        loads = [ReplicaLoad(r.replica_id, r.queued_prefill_tokens, r.num_running, r.num_waiting,
                             r.block_manager.num_free_blocks, r.block_manager.num_blocks) for r in replicas]
        best = rank_for_decode(loads, req.prompt_tokens + req.trace.output_tokens, block_size=self.spec.engine.block_size)[0]
        replica = next(r for r in replicas if r.replica_id == best)
        req.stages.append("decode")
        replica.add_handoff(req)

    def on_idle(self, replica: BaseReplica) -> None:
        if replica.draining and replica.num_requests == 0 and not replica.busy:
            replica.alive = False

    def _fail(self, req: SimRequest, outcome: str, reason: str) -> None:
        req.outcome, req.reason = outcome, reason
        req.finish_s = self.loop.now
        self._settle(req)

    def _settle(self, req: SimRequest) -> None:
        """A request has ended: its admission slot frees, its record is written."""
        if req.admitted:
            self.admission.release(req.trace.qos_class)
            self.queue_waits.ended(str(id(req)))
            req.admitted = False
        self._record(req)
        self._outstanding -= 1
        self._check_done()

    def _record(self, req: SimRequest) -> None:
        gaps = sorted(req.gaps)
        p50 = percentile_sorted(gaps, 50) if gaps else None
        p99 = percentile_sorted(gaps, 99) if gaps else None
        outcome = {"ok": "ok", "rejected": "rejected"}.get(req.outcome, "error")
        self.records.append(RequestRecord(req.request_id, req.trace.qos_class, req.site or "", ">".join(req.stages),
                                          req.ttft_s, p50, p99, req.prompt_tokens, req.tokens, outcome, self.loop.now,
                                          req.trace.num_images))

    # -- the reconcile loop -----------------------------------------------------------------------------
    def _control(self) -> None:
        """Observe ▸ `plan_round` ▸ act, as `controller.reconcile` does on a live cluster."""
        now = self.loop.now
        self._act(self.controller.round(self.observe(now)))
        self._compact()
        if not self._done:
            self.loop.after(self.options.control_interval_s, Kind.CONTROL, self._control)

    def observe(self, now: float) -> Observation:
        """What the live controller would see: heartbeats over the last interval, the request
        records of the window, replicas per pool@site, each site's power now."""
        interval = max(now - self._last_control, 1e-9)
        self._last_control = now
        window = self.autoscaler_config.request_window_s
        while self.records and self.records[0].timestamp_s <= now - window:
            self.records.popleft()
        self._expire_backlog(now)
        for r in self._all_replicas:
            if r.alive and r.ready:
                r.sync()
        heartbeats = [self._heartbeat(pool, r, interval, now)
                      for site in self.sites.values() for pool, replicas in site.replicas.items()
                      for r in replicas if r.alive and r.ready]
        current = {pool_key(p, s.name): self._count(s, p) for s in self.sites.values() for p in self.pools}
        snapshot = TelemetrySnapshot(tuple(heartbeats), tuple(self.records), taken_at_s=now)
        return Observation(now_s=now, snapshot=snapshot, current=current,
                           power_w={name: s.power_fn(now) for name, s in self.sites.items()})

    def _act(self, result: RoundResult) -> None:
        now = self.loop.now
        for target in result.plan.targets:
            if target.desired != target.current:
                self._resize(target.pool, self.sites[target.site], target.desired)
        for d in result.decisions:
            self.decisions.append({"t": now, "kind": d.kind, "target": d.target, "from": d.before, "to": d.after,
                                   "reason": d.reason})
        if result.routing is not None:
            self.shares = result.routing.shares
        for site in self.sites.values():
            self._follow_modes(site, result.replica_modes)

    def _follow_modes(self, site: SiteState, assigned: dict[str, str]) -> None:
        """Each replica runs in the mode the round assigned it; one that has not reported yet
        (still starting) ranks itself among those that have, as a live replica does on its
        first heartbeat (`mode_for_replica`)."""
        routing = self.controller.memory.routing
        counts = routing.modes.get(site.name) if routing is not None else None
        if counts is None or not site.modes:
            return
        by_name = {m.name: m for m in site.modes}
        alive = [(r.rank_id, r) for r in site.alive()]
        reported = [rid for rid, _ in alive if rid in assigned]
        for rid, r in alive:
            mode = by_name[assigned[rid]] if rid in assigned else mode_for_replica(rid, reported, site.modes, counts)
            if mode.name == r.mode and mode.power_w == r.power_w and mode.throughput_fraction == r.speed:
                continue
            if mode.throughput_fraction != r.speed:
                r.sync()  # a decode run's later steps were timed at the old speed
            r.mode, r.power_w, r.speed = mode.name, mode.power_w, mode.throughput_fraction

    def _heartbeat(self, pool: str, r: BaseReplica, interval: float, now: float) -> ReplicaHeartbeat:
        busy = min(1.0, r.acct.busy_s / interval)
        if isinstance(r, SimReplica):
            a = r.acct
            hb = ReplicaHeartbeat(pool, r.stage, r.site, r.replica_id, r.num_waiting, r.num_running, r.queued_prefill_tokens,
                                  r.block_manager.num_free_blocks, r.block_manager.num_blocks, a.tokens / interval,
                                  busy, r.power_w, now, power_mode=r.mode,
                                  prefill_tokens_per_busy_s=rate(a.prefill_tokens, a.prefill_s),
                                  decode_tokens_per_busy_s=rate(a.decode_tokens, a.decode_s))
        else:
            hb = ReplicaHeartbeat(pool, r.stage, r.site, r.replica_id, r.num_requests, int(r.busy), 0, 0, 0,
                                  r.acct.images * self.options.tokens_per_image / interval, busy, r.power_w, now,
                                  images_per_s=r.acct.images / interval, queued_images=r.queued_images)
        r.acct = Accounting()
        return hb

    def _count(self, site: SiteState, pool: str) -> int:
        return sum(1 for r in site.replicas.get(pool, ()) if r.alive and not r.draining)

    def _resize(self, pool: str, site: SiteState, desired: int) -> None:
        active = [r for r in site.replicas.get(pool, ()) if r.alive and not r.draining]
        for _ in range(desired - len(active)):
            self._start_replica(pool, site, cold=True)
        if desired < len(active):
            # Drain the least loaded first; one still starting holds no work at all.
            for r in sorted(active, key=lambda r: (r.ready, r.num_requests, r.replica_id))[: len(active) - desired]:
                r.draining = True
                if r.num_requests == 0 and not r.busy:
                    r.alive = False

    def _expire_backlog(self, now: float) -> None:
        for (pool, site_name), queue in self.backlog.items():
            while queue and (queue[0].outcome is not None or now - queue[0].arrival_s > self.options.backlog_timeout_s):
                req = queue.popleft()
                if req.outcome is None:
                    self._fail(req, "failed", f"waited over {self.options.backlog_timeout_s:g} s for a {pool} replica")
            if queue and not self.sites[site_name].alive(pool):
                while queue:
                    req = queue.popleft()
                    if req.outcome is None:
                        self._fail(req, "failed", f"no {pool} replica left at {site_name}")

    def _compact(self) -> None:
        for site in self.sites.values():
            for pool, replicas in site.replicas.items():
                if any(not r.alive for r in replicas):
                    site.replicas[pool] = [r for r in replicas if r.alive]

    # -- power ---------------------------------------------------------------------------------------------
    def _power_tick(self) -> None:
        """Re-read each site's power. What is overdrawn rides on the site's battery for
        `ride_through_s`, then goes dark; meanwhile the controller's next round replans (a
        power swing triggers it at once), and the site router sees the site overdrawn and sends
        it nothing new."""
        for site in self.sites.values():
            site.available_w = site.power_fn(self.loop.now)
            if site.drawn_w > site.available_w + 1e-9 and site.name not in self._cut_pending:
                self._cut_pending.add(site.name)
                self.loop.after(self.options.ride_through_s, Kind.POWER, self._cut, site)
        if not self._done and any(not isinstance(s.power, ConstantPower) for s in self.spec.sites):
            self.loop.after(self.options.power_interval_s, Kind.POWER, self._power_tick)

    def _cut(self, site: SiteState) -> None:
        self._cut_pending.discard(site.name)
        site.available_w = site.power_fn(self.loop.now)
        while site.drawn_w > site.available_w + 1e-9 and site.alive():
            victim = max(site.alive(), key=lambda r: (r.started_s, r.replica_id))  # newest goes dark first
            self.power_cuts += 1
            for req in victim.kill():
                if req.outcome is None:
                    self._fail(req, "failed", f"power cut at {site.name}")

    # -- metrics over time ----------------------------------------------------------------------------------
    def _sample(self) -> None:
        now = self.loop.now
        dt = now - self._last_sample
        self._last_sample = now
        row = {"t": now}
        for name, site in self.sites.items():
            alive = site.alive()
            self.replica_seconds[name] += dt * len(alive)
            self.energy_j[name] += dt * site.drawn_w
            row[name] = {"replicas": {p: sum(1 for r in rs if r.alive) for p, rs in site.replicas.items()},
                         "available_w": site.available_w if math.isfinite(site.available_w) else None,
                         "drawn_w": site.drawn_w}
        self.samples.append(row)
        if not self._done:
            self.loop.after(self.options.sample_interval_s, Kind.SAMPLE, self._sample)

    @property
    def rounds(self) -> list[RoundResult]:
        return self.controller.results

    def all_replicas(self) -> list[BaseReplica]:
        return list(self._all_replicas)
