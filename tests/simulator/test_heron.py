"""The Heron experiment's pure helpers: how sites are sized from their wind, how the week's
15-minute intervals map onto simulated windows, and how each window's arrivals are read from
a trace, and where the wind comes from. Nothing here runs the simulator; one test reads the
GEFCom2012 series where it is present and skips, saying why, where it is not."""

from __future__ import annotations

import numpy as np
import pytest

from gefcom_wind import gefcom_csv
from simulator.experiments.heron import QUICK, site_setup
from simulator.experiments.heron_model import GPU_CAPPED_W, GPU_FULL_W, power_modes
from simulator.experiments.heron_sites import (
    WindDataMissing,
    installed_replicas,
    interval_power,
    least_correlated,
    load_wind,
    wind_path,
    step_power,
    typical_window,
    window_arrivals,
    window_of,
)


def test_a_site_installs_what_its_90th_percentile_wind_affords_at_full_clock():
    wind = np.linspace(0.0, 1.0, 101)  # the 90th percentile is 0.9 of rated
    assert installed_replicas(wind, percentile=90, rated_w=20_000, replica_w=1_600) == 11  # 18 kW / 1.6 kW = 11.25
    assert installed_replicas(wind, percentile=50, rated_w=20_000, replica_w=1_600) == 6  # 10 kW / 1.6 kW = 6.25
    assert installed_replicas(wind, percentile=90, rated_w=16_000, replica_w=1_600) == 9  # exactly 9: no rounding down to 8


def test_sizing_refuses_a_percentile_or_power_out_of_range():
    with pytest.raises(ValueError, match="percentile"):
        installed_replicas(np.ones(10), percentile=0, rated_w=1, replica_w=1)
    with pytest.raises(ValueError, match="rated_w"):
        installed_replicas(np.ones(10), percentile=90, rated_w=1, replica_w=0)


def test_each_interval_takes_the_hourly_wind_interpolated_at_its_midpoint():
    hourly = np.array([0.0, 4.0, 8.0, 0.0])
    # 15-minute intervals from row 1: midpoints at 1.125, 1.375, 1.625, 1.875, 2.125 h
    np.testing.assert_allclose(interval_power(hourly, 1, 5), [4.5, 5.5, 6.5, 7.5, 7.0])
    with pytest.raises(ValueError, match="run past"):
        interval_power(hourly, 2, 8)


def test_window_k_holds_interval_k_from_its_first_second_to_just_before_the_next():
    assert window_of(0.0, 60.0) == 0
    assert window_of(59.999, 60.0) == 0
    assert window_of(60.0, 60.0) == 1
    assert window_of(3 * 60.0, 60.0) == 3
    with pytest.raises(ValueError):
        window_of(1.0, 0.0)


def test_power_steps_at_window_boundaries_and_holds_the_last_interval_while_draining():
    power = step_power([100.0, 50.0, 0.0], 60.0)
    assert [power(t) for t in (0.0, 30.0, 59.9, 60.0, 119.9, 120.0, 500.0)] == [100.0, 100.0, 100.0, 50.0, 50.0, 0.0, 0.0]


def test_each_window_replays_the_next_stretch_of_the_trace_in_real_time():
    times = np.arange(0.0, 100.0, 10.0)  # one arrival every 10 s, a 100 s trace
    idx, at = window_arrivals(times, 100.0, 0, 30.0)
    assert idx.tolist() == [0, 1, 2] and at.tolist() == [0.0, 10.0, 20.0]
    idx, at = window_arrivals(times, 100.0, 1, 30.0)
    assert idx.tolist() == [3, 4, 5] and at.tolist() == [30.0, 40.0, 50.0]
    # window 3 reads trace seconds 90..120: the trace's last arrival, then it starts over
    idx, at = window_arrivals(times, 100.0, 3, 30.0)
    assert idx.tolist() == [9, 0, 1] and at.tolist() == [90.0, 100.0, 110.0]


def test_a_higher_load_reads_more_of_the_trace_into_the_same_window():
    times = np.arange(0.0, 100.0, 10.0)
    idx, at = window_arrivals(times, 100.0, 1, 30.0, load=2.0)  # trace seconds 60..120, twice as fast
    assert idx.tolist() == [6, 7, 8, 9, 0, 1]
    np.testing.assert_allclose(at, [30.0, 35.0, 40.0, 45.0, 50.0, 55.0])
    assert all(window_of(t, 30.0) == 1 for t in at)


def test_the_least_correlated_farms_are_chosen():
    rng = np.random.default_rng(0)
    base = rng.normal(size=500)
    values = np.column_stack([base, base + 0.1 * rng.normal(size=500), rng.normal(size=500), rng.normal(size=500)])
    assert least_correlated(values, ("a", "b", "c", "d"), 3) in {("a", "c", "d"), ("b", "c", "d")}


def test_the_typical_window_skips_weeks_whose_sites_move_together():
    rng = np.random.default_rng(1)
    together = np.repeat(rng.random((168, 1)), 3, axis=1)  # week 0: all three sites identical
    apart = rng.random((168, 3))  # week 1: independent
    series = np.vstack([together, apart])
    assert typical_window(series, hours=168, mean_tolerance=0.2) == 168
    with pytest.raises(ValueError, match="no 168 h window"):
        typical_window(together, hours=168)


def test_missing_wind_data_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(WindDataMissing, match="no open licence"):
        load_wind(tmp_path / "gefcom2012_wind_5farms_hourly.csv")
    # nothing given, no PAVANA_WIND_CSV, no shared folder beside the working directory
    monkeypatch.delenv("PAVANA_WIND_CSV", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WindDataMissing, match="--wind PATH or PAVANA_WIND_CSV=PATH"):
        wind_path()


def test_the_wind_is_read_from_the_path_given_or_pavana_wind_csv(tmp_path, monkeypatch):
    given = tmp_path / "given.csv"
    from_env = tmp_path / "env.csv"
    for path in (given, from_env):
        path.write_text("date,wp1\n2009070100,0.5\n")
    monkeypatch.setenv("PAVANA_WIND_CSV", str(from_env))
    assert wind_path(given) == given
    assert wind_path() == from_env


def test_the_quick_setup_on_gefcom_picks_weakly_correlated_farms():
    """Where the GEFCom2012 file is present (CI), the experiment's sites come from it."""
    setup = site_setup(QUICK, gefcom_csv())
    assert len(setup.farms) == 3 and setup.wind_csv.name == "gefcom2012_wind_5farms_hourly.csv"
    off_diagonal = setup.week_correlation[~np.eye(3, dtype=bool)]
    assert off_diagonal.max() < 0.3
    assert all(n >= 1 for n in setup.installed.values())


def test_a_replica_draws_its_gpus_power_in_each_mode():
    modes = {m["name"]: m for m in power_modes(4)}
    assert modes["full"]["power_w"] == 4 * GPU_FULL_W and modes["full"]["throughput_fraction"] == 1.0
    assert modes["capped"]["power_w"] == 4 * GPU_CAPPED_W and modes["capped"]["throughput_fraction"] < 1.0
    assert [m["name"] for m in power_modes(4, capped=False)] == ["full"]
