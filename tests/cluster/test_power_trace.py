from pathlib import Path

import pytest

from cluster.power_trace import PowerTrace, TraceReplayer, power_at
from cluster.spec import ClusterSpec

SPECS = Path(__file__).resolve().parents[2] / "deploy" / "specs"
WIND = Path(__file__).resolve().parents[3] / "shared" / "data" / "power" / "gefcom2012_wind_5farms_hourly.csv"


@pytest.fixture(scope="module")
def trace():
    return PowerTrace.from_csv(WIND, "wp1")


def test_the_shared_wind_series_loads(trace):
    assert len(trace.values) > 18_000 and trace.stamps[0] == "2009070100"
    assert 0.0 <= trace.values.min() and trace.values.max() <= 1.0
    assert trace.values[:2].tolist() == [0.045, 0.085]


def test_power_is_interpolated_between_hours_and_scaled(trace):
    at = lambda s: power_at(trace, start_index=0, speed=1.0, scale_w=1000.0, elapsed_s=s)
    assert at(0) == pytest.approx(45.0)
    assert at(1800) == pytest.approx(65.0)  # half way between 0.045 and 0.085
    assert at(3600) == pytest.approx(85.0)


def test_speed_and_start_by_timestamp(trace):
    hour_two = trace.start_index("2009070102")
    assert hour_two == 2
    assert power_at(trace, start_index=0, speed=3600.0, scale_w=1.0, elapsed_s=2.0) == pytest.approx(trace.values[2])
    with pytest.raises(ValueError, match="power.start"):
        trace.start_index("1999010100")


def test_the_replay_wraps_around_at_the_end(trace):
    n = len(trace.values)
    assert power_at(trace, start_index=n - 1, speed=3600.0, scale_w=1.0, elapsed_s=1.0) == pytest.approx(trace.values[0])


def test_a_missing_column_is_named():
    with pytest.raises(ValueError, match="wp9"):
        PowerTrace.from_csv(WIND, "wp9")


def test_a_spec_site_replays_its_trace():
    spec = ClusterSpec.from_yaml(SPECS / "two-sites.yaml")
    site = spec.site("farm-a")
    replayer = TraceReplayer(site.power)
    assert replayer.power_w(0.0) == pytest.approx(replayer.trace.values[replayer.start_index] * site.power.scale_w)
