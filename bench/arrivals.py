"""Synthetic arrival times: Poisson, and gamma for bursty traffic.

Both are renewal processes with mean gap 1/rate; the gamma process's gaps have a coefficient
of variation `cv` (cv = 1 is Poisson; cv > 1 clusters requests into bursts, as production
traces show). Seeded, so a run can be repeated exactly.
"""

from __future__ import annotations

import math

import numpy as np


def _check(rate: float, count: int | None, duration_s: float | None) -> None:
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate: must be a finite number of requests/s > 0, got {rate}")
    if (count is None) == (duration_s is None):
        raise ValueError("give exactly one of count (a number of requests) or duration_s")
    if count is not None and count < 1:
        raise ValueError(f"count: must be >= 1, got {count}")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration_s: must be > 0, got {duration_s}")


def _arrivals(draw, rate: float, count: int | None, duration_s: float | None) -> list[float]:
    """Cumulative gaps, the first request at 0; with a duration, every arrival before it."""
    if count is not None:
        gaps = draw(count)
        gaps[0] = 0.0
        return np.cumsum(gaps).tolist()
    times: list[float] = [0.0]
    expected = max(16, int(duration_s * rate * 1.5) + 16)
    while True:
        for t in (times[-1] + np.cumsum(draw(expected))).tolist():
            if t >= duration_s:
                return times
            times.append(t)


def poisson_arrivals(rate: float, *, count: int | None = None, duration_s: float | None = None, seed: int = 0) -> list[float]:
    _check(rate, count, duration_s)
    rng = np.random.default_rng(seed)
    return _arrivals(lambda n: rng.exponential(1.0 / rate, n), rate, count, duration_s)


def gamma_arrivals(rate: float, cv: float, *, count: int | None = None, duration_s: float | None = None, seed: int = 0) -> list[float]:
    _check(rate, count, duration_s)
    if not (math.isfinite(cv) and cv > 0):
        raise ValueError(f"cv: the coefficient of variation must be > 0, got {cv}")
    shape = 1.0 / cv**2
    scale = 1.0 / (rate * shape)
    rng = np.random.default_rng(seed)
    return _arrivals(lambda n: rng.gamma(shape, scale, n), rate, count, duration_s)
