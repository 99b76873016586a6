from pathlib import Path

import pytest

from cluster.records import SitePower, TelemetrySnapshot
from cluster.spec import ClusterSpec
from controller.power import PowerSources

SPECS = Path(__file__).resolve().parents[2] / "deploy" / "specs"


def snapshot(**watts):
    return TelemetrySnapshot(site_power={s: SitePower(site=s, available_w=w, timestamp_s=0.0, source="meter") for s, w in watts.items()}, taken_at_s=0.0)


def test_each_kind_of_source():
    spec = ClusterSpec.parse({"sites": [
        {"name": "grid", "power": {"kind": "constant", "power_w": 5000}},
        {"name": "metered", "power": {"kind": "redis"}},
    ]})
    sources = PowerSources(spec, started_s=0.0)
    assert sources.available_w("grid", snapshot(), 10.0) == 5000
    assert sources.available_w("metered", snapshot(), 10.0) is None  # no reading yet
    assert sources.available_w("metered", snapshot(metered=1200.0), 10.0) == 1200.0
    assert sources.available(snapshot(), 10.0) == {"grid": 5000}
    from autoscaler.round import settings_from_spec

    assert settings_from_spec(spec).site("grid").modes[0].power_w == 300.0  # the planner's view of its modes
    published = sources.published(sources.available(snapshot(metered=1.0), 10.0), 10.0)
    assert [(p.site, p.available_w, p.source) for p in published] == [("grid", 5000, "constant")]


def test_trace_sources_follow_the_wind_over_time():
    spec = ClusterSpec.from_yaml(SPECS / "two-sites.yaml")
    sources = PowerSources(spec, started_s=100.0)
    now, later = sources.available_w("farm-a", snapshot(), 100.0), sources.available_w("farm-a", snapshot(), 100.0 + 3600 / 60)
    first_hours = sources._replayers["farm-a"].trace.values[:2] * spec.site("farm-a").power.scale_w
    assert (now, later) == pytest.approx(tuple(first_hours))  # speed 60: one trace hour per minute
