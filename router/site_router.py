"""The fast timescale of power-aware serving (Heron): which site takes this request, now.

It follows the planner's shares, but reacts between plans: a site whose available power has
dropped below what its running replicas draw gets no new work at once (its replicas are about
to be shed), and its share goes to the others. When no site in the plan can take a class,
the request fails over to any powered site, nearest first; when none is powered, there is no
site (the ingress answers 503 with Retry-After).

Pure: the caller passes the plan, the live power picture and a uniform random number.
"""

from __future__ import annotations

from collections.abc import Mapping
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
class SiteChoice:
    site: str | None
    reason: str


def choose_site(
    qos_class: str,
    shares: Mapping[str, Mapping[str, float]],
    power: Mapping[str, SitePower],
    uniform: float,
) -> SiteChoice:
    """`shares[class][site]` from the last plan; `uniform` in [0, 1) picks by weight."""
    planned = {s: w for s, w in shares.get(qos_class, {}).items() if w > 0 and s in power}
    usable = {s: w for s, w in planned.items() if power[s].powered}
    if usable:
        total = sum(usable.values())
        dropped = sorted(set(planned) - set(usable))
        point = uniform * total
        for site, weight in sorted(usable.items()):
            point -= weight
            if point < 0:
                break
        reason = f"planned share {usable[site] / total:.0%} of {qos_class!r}"
        if dropped:
            reason += f"; {', '.join(dropped)} skipped: power below what its replicas draw"
        return SiteChoice(site, reason)
    powered = sorted((p.latency_ms, s) for s, p in power.items() if p.powered)
    if powered:
        site = powered[0][1]
        why = "no planned site" if not planned else f"planned sites {sorted(planned)} lack power"
        return SiteChoice(site, f"fail-over: {why}; nearest powered site")
    return SiteChoice(None, "no site has power for new work")
