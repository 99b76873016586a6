"""Each site's available power now, from the source its spec names: a constant, a replayed
trace or the built-in wind model, or a meter's readings in Redis — and the planner's view of
each site built from it.

Constant, trace and wind-model sources are published to Redis by the reconcile loop, so the
ingress and `pavana status` see every site's power the same way; a meter writes its own
`SitePower` records.
"""

from __future__ import annotations

import logging
import time

from cluster.records import SitePower, TelemetrySnapshot
from cluster.spec import REPLAYED_POWER, ClusterSpec, ConstantPower, RedisPower

log = logging.getLogger(__name__)


class PowerSources:
    def __init__(self, spec: ClusterSpec, started_s: float | None = None) -> None:
        self.spec = spec
        self.started_s = time.time() if started_s is None else started_s
        self._replayers = {}
        for site in spec.sites:
            if isinstance(site.power, REPLAYED_POWER):
                from cluster.power_trace import TraceReplayer

                self._replayers[site.name] = TraceReplayer(site.power)

    def available_w(self, site: str, snapshot: TelemetrySnapshot, now_s: float) -> float | None:
        """Watts the site may draw now; None when a meter has not reported yet."""
        source = self.spec.site(site).power
        if isinstance(source, ConstantPower):
            return source.power_w
        if isinstance(source, REPLAYED_POWER):
            return self._replayers[site].power_w(now_s - self.started_s)
        assert isinstance(source, RedisPower)
        reading = snapshot.site_power.get(site)
        return reading.available_w if reading is not None else None

    def available(self, snapshot: TelemetrySnapshot, now_s: float) -> dict[str, float]:
        """Watts each site may draw now, for the sites whose power is known (a round's
        `Observation.power_w`)."""
        power = {}
        for site in self.spec.sites:
            watts = self.available_w(site.name, snapshot, now_s)
            if watts is None:
                log.info("site %s: no power reading yet; not capped this round", site.name)
                continue
            power[site.name] = watts
        return power

    def published(self, power_w: dict[str, float], now_s: float) -> list[SitePower]:
        """Records for the sources Pavana itself evaluates (a meter publishes its own), from
        the power a round observed."""
        return [
            SitePower(site=s.name, available_w=power_w[s.name], timestamp_s=now_s, source=s.power.kind)
            for s in self.spec.sites
            if not isinstance(s.power, RedisPower) and s.name in power_w
        ]
