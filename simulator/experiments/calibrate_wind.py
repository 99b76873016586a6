"""Calibrate Pavana's built-in wind model (`cluster/wind.py`) to a multi-farm wind series.

    python -m simulator.experiments.calibrate_wind [CSV]    # default: the GEFCom2012 file

Run once against GEFCom2012 (which has no open licence, so it stays outside Pavana): it
prints the series' statistics and the fitted parameters in the form `cluster/wind.py` keeps
them, then the statistics of a long sample of the fitted model beside the targets. Only those
numbers enter Pavana. Any CSV with a first time column and one column per farm (output as a
share of capacity, hourly, no gaps) works the same, to fit the model to other farms.

Why the fit is analytic rather than a search over simulations: every target is a functional
of the model's stationary law, which is computable exactly, so the fitted model meets the
targets up to quadrature error and the test of a sample checks only sampling noise.

- Marginal (mean, variance): the farm's output is h(Z) = curve(Weibull⁻¹(Φ(Z))) with Z
  standard normal; its moments are integrals over Z on a fine grid. Weibull shape and scale
  are solved so both moments match.
- Correlation map: for Z, Z' jointly normal with correlation ρ, Mehler's formula gives
  cov(h_i(Z), h_j(Z')) = Σ_{n≥1} ρⁿ·e_n(h_i)·e_n(h_j), where e_n(h) = E[h(Z)·He_n(Z)]/√n!
  (normalised Hermite coefficients). Inverting it turns each target correlation of outputs
  (lag 1, lag 24, across farms) into the latent Gaussian correlation that produces it.
- Time structure: a latent AR(2)'s autocorrelation follows ρ_k = φ1·ρ_{k-1} + φ2·ρ_{k-2}, with
  ρ1 = φ1/(1−φ2); φ2 is solved so that ρ24 is the latent target, φ1 follows from ρ1.
- Across farms: the contemporaneous covariance of two AR(2) processes driven by innovations
  with correlation c is c·σ_i·σ_j·Σ_k ψ_i(k)·ψ_j(k) (ψ their impulse responses), so c is the
  latent target divided by that sum.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np

from cluster.wind import GEFCOM2012_STATS, FarmModel, PowerCurve, WindModel, WindStats, sample_stats
from pavana_data import external_wind_csv

CONTIGUOUS = ("2009070100", "2011010100")  # GEFCom2012's part without gaps: [first, end)
HERMITE_TERMS = 80
_Z = np.linspace(-9.0, 9.0, 36001)
_PDF = np.exp(-_Z**2 / 2) / math.sqrt(2 * math.pi)
_DZ = _Z[1] - _Z[0]


def read_series(path: Path, *, span: tuple[str, str] | None = CONTIGUOUS) -> tuple[tuple[str, ...], np.ndarray]:
    """Farm names and the (hours, farms) values; rows whose first column lies in `span`
    (GEFCom2012's gapless part by default; None keeps every row)."""
    with Path(path).open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [r for r in reader if span is None or span[0] <= r[0] < span[1]]
    if not rows:
        raise ValueError(f"{path}: no rows in {span}")
    return tuple(header[1:]), np.array([[float(v) for v in r[1:]] for r in rows])


# -- the stationary law, by quadrature ---------------------------------------------------------
def _expect(values: np.ndarray) -> float:
    return float((values * _PDF).sum() * _DZ)


def output_of_latent(shape: float, scale: float, curve: PowerCurve = PowerCurve()) -> np.ndarray:
    """h(z) on the quadrature grid."""
    from scipy.special import log_ndtr

    return curve.fraction(scale * (-log_ndtr(-_Z)) ** (1.0 / shape))


def hermite_coefficients(h: np.ndarray, terms: int = HERMITE_TERMS) -> np.ndarray:
    """e_n = E[h(Z)·He_n(Z)]/√n! for n = 1..terms, by the normalised three-term recurrence."""
    prev, cur = np.ones_like(_Z), _Z.copy()  # He_0/√0!, He_1/√1!
    out = []
    for n in range(1, terms + 1):
        out.append(_expect(h * cur))
        prev, cur = cur, (_Z * cur - math.sqrt(n) * prev) / math.sqrt(n + 1)
    return np.array(out)


def output_correlation(e_i: np.ndarray, e_j: np.ndarray, rho: float) -> float:
    """corr(h_i(Z), h_j(Z')) for latent correlation ρ (Mehler's formula)."""
    powers = rho ** np.arange(1, len(e_i) + 1)
    return float((powers * e_i * e_j).sum() / math.sqrt((e_i**2).sum() * (e_j**2).sum()))


def latent_correlation(e_i: np.ndarray, e_j: np.ndarray, target: float) -> float:
    """The latent ρ whose outputs correlate at `target`."""
    from scipy.optimize import brentq

    return float(brentq(lambda r: output_correlation(e_i, e_j, r) - target, -0.999, 0.9999, xtol=1e-10))


def fit_marginal(mean: float, variance: float, curve: PowerCurve = PowerCurve()) -> tuple[float, float]:
    """Weibull (shape, scale in m/s) whose output through `curve` has this mean and variance."""
    from scipy.optimize import least_squares

    def residual(params: np.ndarray) -> list[float]:
        h = output_of_latent(math.exp(params[0]), math.exp(params[1]), curve)
        m = _expect(h)
        return [(m - mean) / mean, (_expect((h - m) ** 2) - variance) / variance]

    fit = least_squares(residual, x0=[math.log(2.0), math.log(7.0)], xtol=1e-12, ftol=1e-12)
    if np.max(np.abs(fit.fun)) > 1e-6:
        raise ValueError(f"no Weibull wind gives mean {mean} and variance {variance} through the power curve")
    return math.exp(fit.x[0]), math.exp(fit.x[1])


# -- the time structure ------------------------------------------------------------------------
def ar2_autocorrelation(phi1: float, phi2: float, lags: int) -> np.ndarray:
    """ρ_0..ρ_lags of a stationary AR(2)."""
    rho = np.empty(lags + 1)
    rho[0], rho[1] = 1.0, phi1 / (1 - phi2)
    for k in range(2, lags + 1):
        rho[k] = phi1 * rho[k - 1] + phi2 * rho[k - 2]
    return rho


def fit_ar2(rho1: float, rho24: float) -> tuple[float, float]:
    """(φ1, φ2) of the AR(2) with these lag-1 and lag-24 autocorrelations. The search keeps to
    real characteristic roots (φ1² + 4φ2 >= 0): there ρ24 rises with φ2, and the process
    decays without oscillating, as wind's autocorrelation does; complex roots would give a
    spurious cycle of a few days."""
    from scipy.optimize import brentq

    def miss(phi2: float) -> float:
        return ar2_autocorrelation(rho1 * (1 - phi2), phi2, 24)[24] - rho24

    # ρ1²(1−φ2)² + 4φ2 = 0 at its larger root: the most negative φ2 with real roots.
    a, b = rho1**2, 4 - 2 * rho1**2
    lowest = (-b + math.sqrt(b * b - 4 * a * a)) / (2 * a)
    if miss(lowest) > 0:
        raise ValueError(f"lag-24 autocorrelation {rho24:.3f} is below what a smooth AR(2) with lag-1 {rho1:.3f} reaches")
    phi2 = float(brentq(miss, lowest, 0.95, xtol=1e-12))
    return rho1 * (1 - phi2), phi2


def impulse_response(farm: FarmModel, length: int = 4000) -> np.ndarray:
    psi = np.zeros(length)
    psi[0] = 1.0
    psi[1] = farm.ar1
    for k in range(2, length):
        psi[k] = farm.ar1 * psi[k - 1] + farm.ar2 * psi[k - 2]
    return psi


def fit(stats: WindStats, names: tuple[str, ...], curve: PowerCurve = PowerCurve()) -> WindModel:
    """The wind model whose stationary statistics are `stats`."""
    farms, coefficients = [], []
    for i, name in enumerate(names):
        shape, scale = fit_marginal(stats.mean[i], stats.variance[i], curve)
        e = hermite_coefficients(output_of_latent(shape, scale, curve))
        phi1, phi2 = fit_ar2(latent_correlation(e, e, stats.lag1[i]), latent_correlation(e, e, stats.lag24[i]))
        farms.append(FarmModel(name, shape, scale, phi1, phi2))
        coefficients.append(e)
    n = len(names)
    innovation = np.eye(n)
    responses = [impulse_response(f) for f in farms]
    for i in range(n):
        for j in range(i + 1, n):
            target = latent_correlation(coefficients[i], coefficients[j], stats.correlation[i][j])
            gain = farms[i].innovation_std() * farms[j].innovation_std() * float((responses[i] * responses[j]).sum())
            innovation[i, j] = innovation[j, i] = target / gain
    return WindModel(tuple(farms), tuple(tuple(float(v) for v in row) for row in innovation), curve)


def model_source(model: WindModel) -> str:
    """The model as the Python literal `cluster/wind.py` keeps."""
    lines = ["GEFCOM_LIKE = WindModel(", "    farms=("]
    for f in model.farms:
        lines.append(f'        FarmModel("{f.name}", {f.weibull_shape:.6f}, {f.weibull_scale_m_s:.6f}, {f.ar1:.6f}, {f.ar2:.6f}),')
    lines += ["    ),", "    innovation_correlation=("]
    for row in model.innovation_correlation:
        lines.append("        (" + ", ".join(f"{v:.6f}" for v in row) + "),")
    lines += ["    ),", ")"]
    return "\n".join(lines)


def rounded(stats: WindStats, digits: int = 4) -> WindStats:
    """The statistics to `digits` significant digits, as `cluster/wind.py` keeps them."""
    def r(values) -> tuple[float, ...]:
        return tuple(float(f"{v:.{digits}g}") for v in values)

    return WindStats(r(stats.mean), r(stats.variance), r(stats.lag1), r(stats.lag24), tuple(r(row) for row in stats.correlation))


def stats_source(stats: WindStats) -> str:
    def row(values) -> str:
        return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

    return "\n".join([
        "GEFCOM2012_STATS = WindStats(",
        f"    mean={row(stats.mean)},", f"    variance={row(stats.variance)},",
        f"    lag1={row(stats.lag1)},", f"    lag24={row(stats.lag24)},",
        "    correlation=(", *[f"        {row(r)}," for r in stats.correlation], "    ),", ")"])


def comparison(target: WindStats, achieved: WindStats, names: tuple[str, ...]) -> str:
    """A table of target against achieved statistics (Markdown, for docs/simulator.md)."""
    out = ["| farm | mean | variance | lag-1 autocorrelation | lag-24 autocorrelation |", "| --- | --- | --- | --- | --- |"]
    for i, name in enumerate(names):
        out.append(f"| {name} | {target.mean[i]:.3f} / {achieved.mean[i]:.3f} | {target.variance[i]:.4f} / {achieved.variance[i]:.4f} "
                   f"| {target.lag1[i]:.3f} / {achieved.lag1[i]:.3f} | {target.lag24[i]:.3f} / {achieved.lag24[i]:.3f} |")
    out += ["", "| pair | correlation |", "| --- | --- |"]
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            out.append(f"| {names[i]}–{names[j]} | {target.correlation[i][j]:.3f} / {achieved.correlation[i][j]:.3f} |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else external_wind_csv()
    if path is None or not path.is_file():
        print("calibrate_wind: give the path of a wind CSV (GEFCom2012's is not part of Pavana: "
              "pass it, or set PAVANA_WIND_CSV)", file=sys.stderr)
        return 2
    names, values = read_series(path)
    stats = rounded(sample_stats(values))  # fitted from what is committed, to the digit
    print(f"# {path.name}: {values.shape[0]:,} hours, farms {', '.join(names)}\n")
    print(stats_source(stats), "\n")
    model = fit(stats, names)
    print(model_source(model), "\n")
    achieved = sample_stats(model.sample(20 * 8760, seed=0))
    print("# target / achieved (a 20-year sample, seed 0)\n")
    print(comparison(stats, achieved, names))
    if names == tuple(f"wp{i}" for i in range(1, 6)):
        drift = max(abs(a - b) for a, b in zip(stats.lag24, GEFCOM2012_STATS.lag24))
        print(f"\n# largest lag-24 difference from the statistics in cluster/wind.py: {drift:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
