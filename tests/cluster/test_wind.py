"""The built-in wind model against the statistics it is calibrated to (GEFCom2012's farms).

Tolerances are sampling noise of a 20-year hourly sample, not slack in the fit (the fit is
exact up to quadrature): across eight seeds the statistics' standard deviations were about
0.003 (mean), 1.5% (variance), 0.0007 (lag-1), 0.011 (lag-24) and 0.012 (correlations); the
bounds below are about three of them.
"""

import numpy as np
import pytest

from cluster.wind import FARMS, GEFCOM2012_STATS, GEFCOM_LIKE, FarmModel, WindModel, WindModelError, sample_stats
from gefcom_wind import gefcom_csv
from simulator.experiments import calibrate_wind

MEAN_ABS = 0.015
VARIANCE_REL = 0.08
LAG1_ABS = 0.005
LAG24_ABS = 0.04
CORRELATION_ABS = 0.04


@pytest.fixture(scope="module")
def achieved():
    return sample_stats(GEFCOM_LIKE.sample(20 * 8760, seed=0))


def test_each_farm_matches_the_target_mean_and_hourly_variance(achieved):
    target = GEFCOM2012_STATS
    assert np.allclose(achieved.mean, target.mean, atol=MEAN_ABS)
    assert np.allclose(achieved.variance, target.variance, rtol=VARIANCE_REL, atol=0)


def test_each_farm_matches_the_target_lag_1_and_lag_24_autocorrelation(achieved):
    assert np.allclose(achieved.lag1, GEFCOM2012_STATS.lag1, atol=LAG1_ABS)
    assert np.allclose(achieved.lag24, GEFCOM2012_STATS.lag24, atol=LAG24_ABS)


def test_farms_correlate_as_the_measured_ones_do(achieved):
    assert np.allclose(achieved.correlation, GEFCOM2012_STATS.correlation, atol=CORRELATION_ABS)
    # partly complementary, as Heron exploits: the least correlated pair stays far from 1
    assert min(achieved.correlation[1][4], achieved.correlation[4][1]) < 0.3


def test_an_ar1_wind_could_not_meet_both_autocorrelations():
    """Why the model is AR(2): matching lag 1 with an AR(1) overshoots lag 24."""
    for farm in GEFCOM_LIKE.farms:
        assert farm.ar2 < 0
    ar1 = WindModel(tuple(FarmModel(f.name, f.weibull_shape, f.weibull_scale_m_s, f.ar1 / (1 - f.ar2), 0.0) for f in GEFCOM_LIKE.farms),
                    GEFCOM_LIKE.innovation_correlation)
    lag24 = sample_stats(ar1.sample(10 * 8760, seed=0)).lag24
    assert min(np.array(lag24) - np.array(GEFCOM2012_STATS.lag24)) > 0.08


def test_output_is_a_share_of_capacity_with_calms_and_full_output():
    series = GEFCOM_LIKE.sample(8760, seed=3)
    assert series.shape == (8760, len(FARMS))
    assert series.min() == 0.0 and series.max() == 1.0
    # Calm hours (below cut-in) exist at every farm; the model has fewer (about 5-7%) than
    # GEFCom's farms (9-19%), whose zeros also hold outages: the share is not a target.
    calm = (series == 0.0).mean(axis=0)
    assert np.all((0.02 < calm) & (calm < 0.2))


def test_the_same_seed_gives_the_same_wind_and_another_seed_other_wind():
    assert np.array_equal(GEFCOM_LIKE.sample(100, seed=7), GEFCOM_LIKE.sample(100, seed=7))
    assert not np.array_equal(GEFCOM_LIKE.sample(100, seed=7), GEFCOM_LIKE.sample(100, seed=8))


def test_the_committed_parameters_are_the_fit_of_the_committed_statistics():
    """The model in cluster/wind.py is what the calibration gives for the numbers beside it
    (so nothing but those statistics went into it)."""
    fitted = calibrate_wind.fit(GEFCOM2012_STATS, FARMS)
    for ours, again in zip(GEFCOM_LIKE.farms, fitted.farms):
        assert (ours.weibull_shape, ours.weibull_scale_m_s, ours.ar1, ours.ar2) == pytest.approx(
            (again.weibull_shape, again.weibull_scale_m_s, again.ar1, again.ar2), abs=2e-4)
    assert np.allclose(GEFCOM_LIKE.innovation_correlation, fitted.innovation_correlation, atol=2e-4)


def test_the_ar2_fit_meets_both_autocorrelations_exactly():
    phi1, phi2 = calibrate_wind.fit_ar2(0.96, 0.3)
    rho = calibrate_wind.ar2_autocorrelation(phi1, phi2, 24)
    assert (rho[1], rho[24]) == pytest.approx((0.96, 0.3), abs=1e-9)
    assert phi1**2 + 4 * phi2 >= 0  # real roots: no spurious cycle


def test_unusable_models_are_refused_with_the_field():
    farms = GEFCOM_LIKE.farms[:2]
    with pytest.raises(WindModelError, match="innovation_correlation"):
        WindModel(farms, ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    with pytest.raises(WindModelError, match="not positive definite"):
        WindModel(farms, ((1.0, 1.2), (1.2, 1.0)))
    with pytest.raises(WindModelError, match="stationary"):
        WindModel((FarmModel("x", 2.0, 7.0, 0.7, 0.5),), ((1.0,),))
    with pytest.raises(WindModelError, match="farm"):
        GEFCOM_LIKE.farm_index("wp7")


def test_the_committed_statistics_are_those_of_the_gefcom_series():
    """Where the series is present (CI), the numbers in cluster/wind.py are recomputed from it."""
    names, values = calibrate_wind.read_series(gefcom_csv())
    assert names == FARMS and values.shape == (13_176, 5)
    measured = sample_stats(values)
    for field in ("mean", "variance", "lag1", "lag24"):
        assert getattr(measured, field) == pytest.approx(getattr(GEFCOM2012_STATS, field), rel=1e-3, abs=1e-4), field
    assert np.allclose(measured.correlation, GEFCOM2012_STATS.correlation, atol=1e-4)
