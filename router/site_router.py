"""The fast timescale of power-aware serving (Heron): which site takes this request, now.

It follows the planner's shares, but reacts between plans:
- power: a site whose available power has dropped below what its running replicas draw gets
  no new work at once (its replicas are about to be shed), and its share goes to the others;
- load (given `load`): one candidate site is drawn by the planned shares, a second among all
  powered sites, and the request goes to the one whose entry stage would make it wait less
  (power of two choices: the plan sets where traffic starts, live queues correct it); when even that site would make it wait
  longer than `spill_wait_s`, it spills to the powered site with the shortest wait. A forecast
  planner alone is blind to queues between plans, and a least-loaded router alone is blind to
  the power coming; the blend keeps both (XWind reports the reactive router beating a
  Heron-style planner; this is how Pavana's plan stops losing to it).
When no site in the plan can take a class, the request fails over to any powered site,
nearest first; when none is powered, there is no site (the ingress answers 503 with
Retry-After).

Telemetry tells of a lost site (its node gone) only once its replicas' heartbeats expire, many
seconds later; the orchestrator sees it at once, when a call there fails with its replica lost
or finds no replica to take it. `failover_site` is its fast reaction: a site with such a loss
and no answer from a call made since gets no more tries for a while, and each request it would
have served goes to the next site that has none.

Pure: the caller passes the plan, the live power and load picture, uniform random numbers, the
losses it saw and the time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class NoPoweredSite(RuntimeError):
    """No site can take new work now; the ingress answers 503 with Retry-After."""

    retry_after_s = 5.0


@dataclass(frozen=True, slots=True)
class SitePower:
    available_w: float  # what the site's meter or trace says now
    drawn_w: float  # what its running replicas draw
    latency_ms: float = 0.0

    @property
    def overdrawn(self) -> bool:
        return self.available_w < self.drawn_w

    @property
    def powered(self) -> bool:
        return self.available_w > 0 and not self.overdrawn


@dataclass(frozen=True, slots=True)
class SiteLoad:
    """How long a new request would wait at a site's entry stage, and how full its KV is."""

    wait_s: float  # queued prefill work over the entry replicas' measured throughput
    kv_occupancy: float = 0.0  # mean over the replicas that hold KV (decode or colocated)

    @property
    def score(self) -> float:
        # A site out of KV room admits nothing new however short its queue; count it a full second late.
        return self.wait_s + (1.0 if self.kv_occupancy >= KV_FULL else 0.0)


KV_FULL = 0.95
# A request spills past the planned sites once even the less loaded candidate would keep it
# waiting this share of its class's TTFT target (the ingress and the simulator pass it).
SPILL_SHARE_OF_TTFT = 0.5


@dataclass(frozen=True, slots=True)
class SiteChoice:
    site: str | None
    reason: str


def choose_site(
    qos_class: str,
    shares: Mapping[str, Mapping[str, float]],
    power: Mapping[str, SitePower],
    uniform: float,
    *,
    load: Mapping[str, SiteLoad] | None = None,
    second: float = 0.5,
    spill_wait_s: float = float("inf"),
) -> SiteChoice:
    """`shares[class][site]` from the last plan; `uniform` in [0, 1) picks by weight, and with
    `load`, `second` draws the other candidate."""
    planned = {s: w for s, w in shares.get(qos_class, {}).items() if w > 0 and s in power}
    usable = {s: w for s, w in planned.items() if power[s].powered}
    if usable:
        total = sum(usable.values())
        dropped = sorted(set(planned) - set(usable))
        site = _draw(usable, uniform)
        reason = f"planned share {usable[site] / total:.0%} of {qos_class!r}"
        if load is not None:
            # The second candidate is any powered site, equally likely: the plan sets where most
            # traffic starts, live queues decide whether a site the plan left idle takes some.
            powered = {s: 1.0 for s, p in power.items() if p.powered}
            site, reason = _less_loaded(site, _draw(powered, second), reason, power, load, spill_wait_s)
        if dropped:
            reason += f"; {', '.join(dropped)} skipped: power below what its replicas draw"
        return SiteChoice(site, reason)
    powered = sorted((p.latency_ms, s) for s, p in power.items() if p.powered)
    if powered:
        site = powered[0][1]
        why = "no planned site" if not planned else f"planned sites {sorted(planned)} lack power"
        return SiteChoice(site, f"fail-over: {why}; nearest powered site")
    return SiteChoice(None, "no site has power for new work")


def _draw(weights: Mapping[str, float], uniform: float) -> str:
    point = uniform * sum(weights.values())
    for site, weight in sorted(weights.items()):
        point -= weight
        if point < 0:
            return site
    return site


def _less_loaded(
    first: str, other: str, reason: str, power: Mapping[str, SitePower], load: Mapping[str, SiteLoad], spill_wait_s: float
) -> tuple[str, str]:
    unknown = SiteLoad(wait_s=0.0)
    a, b = load.get(first, unknown), load.get(other, unknown)
    site = other if b.score < a.score else first
    if site != first:
        reason += f"; {other} instead of {first}: {b.wait_s:.2f} s wait against {a.wait_s:.2f} s"
    best = load.get(site, unknown)
    if best.score > spill_wait_s:
        powered = [s for s, p in power.items() if p.powered and s in load]
        if powered:
            spill = min(powered, key=lambda s: (load[s].score, power[s].latency_ms, s))
            if load[spill].score < best.score:
                return spill, (f"spill-over: {site} would wait {best.wait_s:.2f} s (> {spill_wait_s:.2f} s); "
                               f"{spill} waits {load[spill].wait_s:.2f} s")
    return site, reason


# A site that lost a replica (or left a call unplaced) and has not answered since is passed over
# this long: longer than a heartbeat lives in telemetry (15 s), so that by the time it is tried
# again the ingress's site view has dropped a site that is really gone.
SITE_LOSS_MEMORY_S = 20.0


@dataclass(frozen=True, slots=True)
class SiteLoss:
    """The last time a call at a site failed for want of a replica, and how."""

    at_s: float
    cause: str


def site_is_lost(loss: SiteLoss | None, now_s: float, memory_s: float = SITE_LOSS_MEMORY_S) -> bool:
    return loss is not None and now_s - loss.at_s < memory_s


def failover_site(
    current: str,
    sites: Sequence[str],
    losses: Mapping[str, SiteLoss],
    now_s: float,
    *,
    memory_s: float = SITE_LOSS_MEMORY_S,
) -> SiteChoice:
    """Where the next try of a request bound for `current` goes: `current` unless it is lost
    (`site_is_lost`); else the first site of `sites` (the spec's order) that is not; when every
    site is lost, `current` still (a bounded retry there beats giving up without one)."""
    loss = losses.get(current)
    if not site_is_lost(loss, now_s, memory_s):
        return SiteChoice(current, f"{current} serves")
    for site in sites:
        if site != current and not site_is_lost(losses.get(site), now_s, memory_s):
            return SiteChoice(site, f"fail-over: {current} lost a replica {now_s - loss.at_s:.1f} s ago ({loss.cause}); {site} has not")
    return SiteChoice(current, f"every site lost a replica within {memory_s:.0f} s; {current} is tried again")
