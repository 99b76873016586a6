"""Pavana's built-in wind: a seeded model of five wind farms' hourly output, so that demos,
examples and tests have sites whose power comes and goes without any data file.

Why a model and not a recording: the public multi-farm series that Heron-style experiments use
(GEFCom2012's wind track) carries no open licence, so Pavana neither ships it nor anything
copied from it row by row. The model reproduces the statistics that matter to a power-aware
router — how much each farm's output varies hour to hour, how long a calm or a gust lasts, and
how far the farms move together — and those statistics (a few numbers about the data, not the
data) are all it takes from GEFCom2012.

The model, per farm i (hour t):

- a latent Gaussian AR(2) process z_i(t) = φ1·z_i(t-1) + φ2·z_i(t-2) + σ_i·ε_i(t) with unit
  variance. AR(2) rather than AR(1): wind output is smooth over an hour or two but forgets
  within a day (lag-1 autocorrelation 0.95, lag-24 about 0.25); an AR(1) with the first has
  the second near 0.4, while a negative φ2 gives both.
- innovations ε(t) correlated across farms (Cholesky factor of `innovation_correlation`), so
  the farms' outputs correlate as the measured farms do: partly together, partly complementary.
- wind speed v = Weibull(shape k_i, scale c_i) at the quantile Φ(z_i) (a Gaussian copula keeps
  the time and cross-farm structure while giving speeds the usual Weibull marginal);
- output = a turbine power curve of v normalised to rated power: 0 below cut-in (3 m/s), cubic
  up to rated (12 m/s), 1 up to cut-out (25 m/s), 0 beyond.

`simulator/experiments/calibrate_wind.py` computes the statistics from the GEFCom2012 file
once and fits every parameter analytically (Gaussian quadrature and a Hermite expansion of
the copula's correlation map), so the model's stationary statistics equal the targets by
construction; `tests/cluster/test_wind.py` checks a long seeded sample against them.

Target (GEFCom2012 farms 1-5, 2009-07-01 to 2011-01-01, 13,176 hours) against achieved (a
20-year sample, seed 0); per farm in `docs/simulator.md`:

| statistic | target, range over farms | achieved | largest difference |
| --- | --- | --- | --- |
| mean (capacity factor) | 0.242-0.326 | 0.245-0.330 | 0.005 |
| variance of hourly output | 0.0571-0.0986 | 0.0584-0.1002 | 0.0025 |
| lag-1 autocorrelation | 0.947-0.963 | 0.947-0.963 | 0.0007 |
| lag-24 autocorrelation | 0.184-0.274 | 0.195-0.287 | 0.018 |
| correlation between farms (10 pairs) | 0.237-0.765 | 0.232-0.764 | 0.008 |

Not modelled: the daily cycle (GEFCom's mean output varies by about ±0.025 over the hours of
the day) and seasons (the model is stationary), and hours at zero beyond calms: the model's
farms are becalmed 5-7% of hours, GEFCom's at zero 9-19% (outages and curtailment among them).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

HOUR_S = 3600.0


class WindModelError(ValueError):
    """A wind model or sample request that cannot be used; the message names the field."""


@dataclass(frozen=True, slots=True)
class PowerCurve:
    """A turbine's output as a share of rated power by wind speed (a generic 2-3 MW curve)."""

    cut_in_m_s: float = 3.0
    rated_m_s: float = 12.0
    cut_out_m_s: float = 25.0

    def fraction(self, speed_m_s: np.ndarray) -> np.ndarray:
        v = np.asarray(speed_m_s, dtype=float)
        rising = (v**3 - self.cut_in_m_s**3) / (self.rated_m_s**3 - self.cut_in_m_s**3)
        out = np.where(v < self.cut_in_m_s, 0.0, np.where(v < self.rated_m_s, rising, 1.0))
        return np.where(v >= self.cut_out_m_s, 0.0, out)


@dataclass(frozen=True, slots=True)
class FarmModel:
    name: str
    weibull_shape: float
    weibull_scale_m_s: float
    ar1: float  # φ1 of the latent AR(2)
    ar2: float  # φ2 of the latent AR(2)

    def innovation_std(self) -> float:
        """σ that gives the latent process unit variance (the AR(2) variance formula)."""
        p1, p2 = self.ar1, self.ar2
        return math.sqrt((1 + p2) * ((1 - p2) ** 2 - p1**2) / (1 - p2))


@dataclass(frozen=True, slots=True)
class WindStats:
    """What the model is calibrated to, per farm and across farms."""

    mean: tuple[float, ...]  # capacity factor
    variance: tuple[float, ...]  # of the hourly output (a share of capacity, squared)
    lag1: tuple[float, ...]  # autocorrelation one hour apart
    lag24: tuple[float, ...]  # autocorrelation a day apart
    correlation: tuple[tuple[float, ...], ...]  # between farms, same hour


@dataclass(frozen=True)
class WindModel:
    farms: tuple[FarmModel, ...]
    innovation_correlation: tuple[tuple[float, ...], ...]
    curve: PowerCurve = PowerCurve()
    burn_in_hours: int = 2000  # the AR(2) forgets its zero start long before this

    def __post_init__(self) -> None:
        n = len(self.farms)
        corr = np.asarray(self.innovation_correlation, dtype=float)
        if corr.shape != (n, n):
            raise WindModelError(f"innovation_correlation: must be {n}x{n} for {n} farms, got {corr.shape}")
        for f in self.farms:
            p1, p2 = f.ar1, f.ar2
            if not (abs(p2) < 1 and p1 + p2 < 1 and p2 - p1 < 1):
                raise WindModelError(f"farm {f.name}: ar1={p1}, ar2={p2} is not a stationary AR(2)")
            if f.weibull_shape <= 0 or f.weibull_scale_m_s <= 0:
                raise WindModelError(f"farm {f.name}: Weibull shape and scale must be > 0")
        try:
            np.linalg.cholesky(corr)
        except np.linalg.LinAlgError:
            raise WindModelError("innovation_correlation: not positive definite") from None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.farms)

    def latent(self, hours: int, seed: int) -> np.ndarray:
        """(hours, farms) unit-variance Gaussian processes, correlated across farms."""
        from scipy.signal import lfilter

        if hours < 1:
            raise WindModelError(f"hours: must be >= 1, got {hours}")
        rng = np.random.default_rng(seed)
        total = hours + self.burn_in_hours
        chol = np.linalg.cholesky(np.asarray(self.innovation_correlation, dtype=float))
        shocks = rng.standard_normal((total, len(self.farms))) @ chol.T
        z = np.empty_like(shocks)
        for i, f in enumerate(self.farms):
            z[:, i] = lfilter([f.innovation_std()], [1.0, -f.ar1, -f.ar2], shocks[:, i])
        return z[self.burn_in_hours:]

    def power_fraction(self, latent: np.ndarray) -> np.ndarray:
        """Output as a share of each farm's capacity, from the latent processes."""
        from scipy.special import log_ndtr

        # Weibull quantile at Φ(z): c·(−ln(1−Φ(z)))^(1/k), with 1−Φ(z) = Φ(−z) in logs so that
        # the far tails stay finite.
        exceed = -log_ndtr(-np.asarray(latent, dtype=float))
        shape = np.array([f.weibull_shape for f in self.farms])
        scale = np.array([f.weibull_scale_m_s for f in self.farms])
        return self.curve.fraction(scale * exceed ** (1.0 / shape))

    def sample(self, hours: int, seed: int = 0) -> np.ndarray:
        """(hours, farms) hourly output in [0, 1] of each farm's capacity; the same seed gives
        the same series, and the farms of one sample are correlated as calibrated."""
        return self.power_fraction(self.latent(hours, seed))

    def farm_index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise WindModelError(f"farm: {name!r} is not a farm of the wind model (farms: {list(self.names)})") from None


def sample_stats(series: np.ndarray) -> WindStats:
    """The calibration statistics of an (hours, farms) series."""
    x = np.asarray(series, dtype=float)

    def acf(col: np.ndarray, lag: int) -> float:
        d = col - col.mean()
        return float((d[:-lag] * d[lag:]).sum() / (d * d).sum())

    cols = range(x.shape[1])
    return WindStats(
        mean=tuple(float(x[:, i].mean()) for i in cols),
        variance=tuple(float(x[:, i].var()) for i in cols),
        lag1=tuple(acf(x[:, i], 1) for i in cols),
        lag24=tuple(acf(x[:, i], 24) for i in cols),
        correlation=tuple(tuple(float(v) for v in row) for row in np.corrcoef(x.T)),
    )


# -- the calibrated default --------------------------------------------------------------------
# The statistics of GEFCom2012's wind farms 1-5 over the part without gaps (2009-07-01 00:00
# to 2011-01-01 00:00, 13,176 hours), as `python -m simulator.experiments.calibrate_wind`
# prints them. Facts about the data, not the data: the series itself is not in Pavana.
GEFCOM2012_STATS = WindStats(
    mean=(0.2421, 0.2622, 0.3259, 0.276, 0.2585),
    variance=(0.05711, 0.07378, 0.09857, 0.08235, 0.07879),
    lag1=(0.9539, 0.9625, 0.9528, 0.9568, 0.9466),
    lag24=(0.2705, 0.2332, 0.2637, 0.2743, 0.1839),
    correlation=(
        (1, 0.4027, 0.5983, 0.7646, 0.5524),
        (0.4027, 1, 0.3946, 0.5105, 0.2368),
        (0.5983, 0.3946, 1, 0.6493, 0.4064),
        (0.7646, 0.5105, 0.6493, 1, 0.4894),
        (0.5524, 0.2368, 0.4064, 0.4894, 1),
    ),
)

# Fitted to GEFCOM2012_STATS by `simulator/experiments/calibrate_wind.py` (its output pasted).
GEFCOM_LIKE = WindModel(
    farms=(
        FarmModel("wp1", 3.022752, 7.654084, 1.074411, -0.117314),
        FarmModel("wp2", 2.686663, 7.781838, 1.252853, -0.290902),
        FarmModel("wp3", 2.613584, 8.461630, 1.113746, -0.155352),
        FarmModel("wp4", 2.576333, 7.902178, 1.135526, -0.174604),
        FarmModel("wp5", 2.483543, 7.674944, 1.155301, -0.204533),
    ),
    innovation_correlation=(
        (1.000000, 0.447333, 0.647057, 0.801974, 0.605291),
        (0.447333, 1.000000, 0.442236, 0.562223, 0.274949),
        (0.647057, 0.442236, 1.000000, 0.699186, 0.460037),
        (0.801974, 0.562223, 0.699186, 1.000000, 0.547820),
        (0.605291, 0.274949, 0.460037, 0.547820, 1.000000),
    ),
)
FARMS = GEFCOM_LIKE.names


@functools.lru_cache(maxsize=8)
def builtin_series(seed: int, hours: int) -> np.ndarray:
    """The built-in model's sample, cached: every site of a spec that names the same seed
    reads one joint sample (so their farms correlate as calibrated) drawn once."""
    series = GEFCOM_LIKE.sample(hours, seed)
    series.setflags(write=False)
    return series
