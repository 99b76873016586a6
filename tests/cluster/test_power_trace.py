"""Replaying power series: recorded ones from a CSV (GEFCom2012 where it is present, small
files made here otherwise) and the built-in wind model, as a site's spec names them."""

from pathlib import Path

import numpy as np
import pytest

from cluster.power_trace import PowerTrace, TraceReplayer, power_at
from cluster.spec import ClusterSpec, WindPower
from cluster.wind import GEFCOM_LIKE
from gefcom_wind import gefcom_csv

SPECS = Path(__file__).resolve().parents[2] / "deploy" / "specs"


@pytest.fixture(scope="module")
def gefcom():
    return PowerTrace.from_csv(gefcom_csv(), "wp1")


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "wind.csv"
    path.write_text("date,wp1,wp2\n2009070100,0.045,0.5\n2009070101,0.085,0.4\n2009070102,0.2,\n2009070103,0.1,0.3\n")
    return PowerTrace.from_csv(path, "wp1")


def test_the_gefcom_wind_series_loads_where_it_is_present(gefcom):
    assert len(gefcom.values) > 18_000 and gefcom.stamps[0] == "2009070100"
    assert 0.0 <= gefcom.values.min() and gefcom.values.max() <= 1.0
    assert gefcom.values[:2].tolist() == [0.045, 0.085]


def test_power_is_interpolated_between_hours_and_scaled(trace):
    at = lambda s: power_at(trace, start_index=0, speed=1.0, scale_w=1000.0, elapsed_s=s)  # noqa: E731
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


def test_rows_without_a_value_in_the_column_are_left_out(tmp_path):
    path = tmp_path / "wind.csv"
    path.write_text("date,wp1,wp2\n2009070100,0.045,0.5\n2009070101,0.085,\n2009070102,0.2,0.3\n")
    assert PowerTrace.from_csv(path, "wp2").values.tolist() == [0.5, 0.3]


def test_a_missing_column_and_a_missing_file_are_named(trace, tmp_path):
    path = tmp_path / "wind.csv"
    path.write_text("date,wp1\n2009070100,0.5\n")
    with pytest.raises(ValueError, match="wp9"):
        PowerTrace.from_csv(path, "wp9")
    with pytest.raises(ValueError, match="power.path: no trace file"):
        PowerTrace.from_csv(tmp_path / "absent.csv", "wp1")


def test_a_wind_model_site_replays_its_farm_of_the_joint_sample():
    source = WindPower(kind="wind", farm="wp3", seed=4, hours=500, scale_w=2000.0, start=10, speed=3600.0)
    replayer = TraceReplayer(source)
    farm = GEFCOM_LIKE.sample(500, seed=4)[:, GEFCOM_LIKE.farm_index("wp3")]
    assert np.array_equal(replayer.trace.values, farm)
    assert replayer.power_w(0.0) == pytest.approx(farm[10] * 2000.0)
    assert replayer.power_w(2.5) == pytest.approx((farm[12] + 0.5 * (farm[13] - farm[12])) * 2000.0)
    assert replayer.power_w(490.0) == pytest.approx(farm[0] * 2000.0)  # hour 500 wraps to hour 0


def test_sites_with_one_seed_share_a_sample_and_other_seeds_differ():
    one = PowerTrace.from_wind_model("wp1", seed=1, hours=200)
    again = PowerTrace.from_wind_model("wp1", seed=1, hours=200)
    other = PowerTrace.from_wind_model("wp1", seed=2, hours=200)
    assert np.array_equal(one.values, again.values)
    assert not np.array_equal(one.values, other.values)


def test_the_two_sites_example_runs_on_the_built_in_wind():
    spec = ClusterSpec.from_yaml(SPECS / "two-sites.yaml")
    for name in ("farm-a", "farm-b"):
        site = spec.site(name)
        assert isinstance(site.power, WindPower)
        replayer = TraceReplayer(site.power)
        assert replayer.power_w(0.0) == pytest.approx(replayer.trace.values[0] * site.power.scale_w)
    # the two farms of one sample: partly together, partly complementary
    a = TraceReplayer(spec.site("farm-a").power).trace.values
    b = TraceReplayer(spec.site("farm-b").power).trace.values
    assert 0.4 < np.corrcoef(a, b)[0, 1] < 0.8
