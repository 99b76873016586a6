"""The live power planner (Heron's slow timescale) over telemetry: forecast each site's power,
measure each class's demand, solve `site_planner.plan_power`, and say what changed.

- Forecast. Persistence (the next interval's power is the last reading) or exponential
  smoothing; the planner plans on the *lower* of the reading now and the forecast, so a site
  whose wind is falling is not promised work it will not have. `pavana bench power` measures
  both predictors' one-hour error on the shared wind series.
- Demand. Per QoS class, arrivals per second over the request window, and the full-clock
  replica-seconds one request costs: its mean prompt and output tokens over the pool's
  measured tokens per busy second (the profiled default until telemetry has measured it).
  A class with no recent traffic is spread over the sites in proportion to their capacity,
  so its first requests are not sent to one site by accident.
- Modes. The plan's per-site mode counts are enacted by the replicas themselves
  (`cluster.power_modes.mode_for_replica`): each replica ranks itself among the live replicas of its site and
  takes the mode at that rank, highest throughput first.

Pure: records and numbers in, records out; no Ray, Redis or clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from autoscaler.site_planner import ClassDemand, PowerPlan, SiteInput, best_mode_mix, plan_power
from cluster.power_modes import full_mode
from cluster.records import Decision, RequestRecord, RoutingPlan

FORECASTERS = ("persistence", "ewma")
# A class's share at a site must move by more than this to count as a reroute decision.
REROUTE_THRESHOLD = 0.05


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    forecaster: str = "persistence"
    ewma_alpha: float = 0.5
    interval_s: float = 30.0  # replan at least this often
    # Replan at once when a site's power falls below this share of what the plan assumed
    # (or rises above its inverse): the plan's promises no longer hold.
    replan_drop_fraction: float = 0.9
    # Profiled defaults until heartbeats have measured them: prompt tokens one replica prefills,
    # and output tokens it decodes, per second of doing each at full clock.
    prefill_tokens_per_s: float = 2_000.0
    decode_tokens_per_s: float = 400.0
    request_window_s: float = 30.0

    def __post_init__(self) -> None:
        if self.forecaster not in FORECASTERS:
            raise ValueError(f"forecaster: must be one of {FORECASTERS}, got {self.forecaster!r}")
        if not 0 < self.ewma_alpha <= 1:
            raise ValueError(f"ewma_alpha: must be in (0, 1], got {self.ewma_alpha}")
        if not 0 < self.replan_drop_fraction <= 1:
            raise ValueError(f"replan_drop_fraction: must be in (0, 1], got {self.replan_drop_fraction}")


def forecast(history: Sequence[float], settings: PlannerSettings) -> float:
    """The next interval's power from past readings, oldest first."""
    if not history:
        raise ValueError("forecast: no readings")
    if settings.forecaster == "persistence":
        return history[-1]
    level = history[0]
    for value in history[1:]:
        level = settings.ewma_alpha * value + (1 - settings.ewma_alpha) * level
    return level


def planning_power(now_w: float, history: Sequence[float], settings: PlannerSettings) -> float:
    """What the plan may count on: the lower of power now and its forecast."""
    return min(now_w, forecast([*history, now_w], settings))


def class_demands(
    requests: Iterable[RequestRecord],
    classes: Mapping[str, float],  # class -> weight (priority: higher counts more)
    now_s: float,
    settings: PlannerSettings,
    prefill_tokens_per_s: float | None = None,
    decode_tokens_per_s: float | None = None,
    latency_budget_ms: Mapping[str, float] | None = None,
) -> list[ClassDemand]:
    """Per class, arrivals per second over the window and the cost of one request: its mean
    prompt at the prefill rate plus its mean output at the decode rate (measured, else the
    profiled defaults), in full-clock replica-seconds."""
    prefill_rate = prefill_tokens_per_s or settings.prefill_tokens_per_s
    decode_rate = decode_tokens_per_s or settings.decode_tokens_per_s
    recent = [r for r in requests if now_s - r.timestamp_s <= settings.request_window_s]
    demands = []
    for name, weight in classes.items():
        mine = [r for r in recent if r.qos_class == name]
        prompt = sum(r.prompt_tokens for r in mine) / len(mine) if mine else 0.0
        output = sum(r.output_tokens for r in mine) / len(mine) if mine else 0.0
        cost = prompt / prefill_rate + output / decode_rate
        demands.append(
            ClassDemand(
                name=name,
                rate_rps=len(mine) / settings.request_window_s,
                cost_replica_s=max(cost, 1.0 / decode_rate),
                latency_budget_ms=(latency_budget_ms or {}).get(name, math.inf),
                weight=weight,
            )
        )
    return demands


def plan_routing(
    sites: Sequence[SiteInput],  # available_power_w already the planning power
    demands: Sequence[ClassDemand],
    now_s: float,
) -> RoutingPlan:
    plan = plan_power(list(sites), list(demands))
    shares = routing_shares(plan, sites, demands)
    # The modes are the site's best affordable mix, not only what today's demand needs: the
    # stage autoscaler sizes the pools (capped by `power_cap.fit_to_power`), and this says
    # which modes the replicas it keeps may run in without overdrawing the site.
    modes = {site.name: best_mode_mix(site)[0] for site in sites}
    reasons = {p.site: p.reason for p in plan.sites}
    return RoutingPlan(
        shares=shares,
        modes=modes,
        planned_power_w={s.name: s.available_power_w for s in sites},
        reasons=reasons,
        goodput_rps=plan.goodput_rps,
        timestamp_s=now_s,
    )


def routing_shares(plan: PowerPlan, sites: Sequence[SiteInput], demands: Sequence[ClassDemand]) -> dict[str, dict[str, float]]:
    """Each class's planned shares; a class the plan serves nowhere (no measured demand, or
    none it could serve) is spread over the sites in proportion to what each could serve, so
    that it does not all fall over to one site."""
    full_capacity = {s.name: best_mode_mix(s)[1] for s in sites}
    shares: dict[str, dict[str, float]] = {}
    for demand in demands:
        planned = plan.shares.get(demand.name, {})
        if sum(planned.values()) > 0:
            shares[demand.name] = dict(planned)
            continue
        reachable = {s.name: full_capacity[s.name] for s in sites if s.latency_ms <= demand.latency_budget_ms}
        total = sum(reachable.values())
        shares[demand.name] = {s.name: (reachable.get(s.name, 0.0) / total if total > 0 else 0.0) for s in sites}
    return shares


def needs_replan(previous: RoutingPlan | None, power_now: Mapping[str, float], now_s: float, settings: PlannerSettings) -> str | None:
    """Why the planner must run now, or None: no plan yet, the interval is up, or a site's
    power moved far from what the plan assumed."""
    if previous is None:
        return "no plan yet"
    if now_s - previous.timestamp_s >= settings.interval_s:
        return f"planning interval of {settings.interval_s:.0f} s elapsed"
    for site, watts in sorted(power_now.items()):
        assumed = previous.planned_power_w.get(site)
        if assumed is None:
            return f"site {site} has power for the first time"
        if watts < assumed * settings.replan_drop_fraction:
            return f"site {site} power fell to {watts:.0f} W, below the {assumed:.0f} W the plan assumed"
        if assumed < watts * settings.replan_drop_fraction:
            return f"site {site} power rose to {watts:.0f} W, above the {assumed:.0f} W the plan assumed"
    return None


def routing_decisions(previous: RoutingPlan | None, plan: RoutingPlan, why: str, sites: Sequence[SiteInput]) -> list[Decision]:
    """A `reroute` decision per class and site whose share moved by more than the threshold,
    and a `power_mode` decision per site whose replicas in reduced modes changed."""
    decisions = []
    old_shares = previous.shares if previous else {}
    # With one site every share is all or nothing and says nothing an operator needs.
    for qos_class, shares in sorted(plan.shares.items()) if len(sites) > 1 else ():
        for site, share in sorted(shares.items()):
            before = old_shares.get(qos_class, {}).get(site, 0.0)
            if abs(share - before) > REROUTE_THRESHOLD:
                decisions.append(
                    Decision(
                        kind="reroute",
                        target=f"{qos_class}@{site}",
                        before=round(before * 100),
                        after=round(share * 100),
                        reason=f"{why}; {plan.reasons.get(site, '')}".rstrip("; "),
                        timestamp_s=plan.timestamp_s,
                    )
                )
    for site in sites:
        full = full_mode(site.modes).name
        reduced_now = sum(n for m, n in plan.modes.get(site.name, {}).items() if m != full)
        reduced_before = sum(n for m, n in (previous.modes.get(site.name, {}) if previous else {}).items() if m != full)
        if reduced_now != reduced_before:
            mix = ", ".join(f"{n} {m}" for m, n in plan.modes[site.name].items() if n) or "none"
            decisions.append(
                Decision(
                    kind="power_mode",
                    target=site.name,
                    before=reduced_before,
                    after=reduced_now,
                    reason=f"{why}; {site.available_power_w:.0f} W planned: modes {mix}",
                    timestamp_s=plan.timestamp_s,
                )
            )
    return decisions


