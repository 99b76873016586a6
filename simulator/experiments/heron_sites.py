"""The sites and the clock of the Heron experiment, as pure helpers over plain arrays:

- the wind: GEFCom2012's hourly farm output, read from a path the user gives (no open
  licence, so Pavana does not carry it; `pavana_data.external_wind_csv`), only its contiguous
  part (2009-07-01 00:00 to 2011-01-01 00:00);
- which farms and which hours: the three farms whose largest pairwise correlation over the
  contiguous part is lowest, at the same hours (no time offset), and the first week-aligned
  window (of the run's length) whose every pairwise correlation is below a bound and whose mean
  output is near the long-run mean (typical wind, neither calm nor stormy);
- sizing: each site's installed replicas are what a stated percentile of its wind affords at
  full clock (Heron right-sizes each site; the GPUs are then fixed);
- the clock: the week is cut into 15-minute planning intervals; interval k is simulated as a
  window of W seconds of real-time traffic, [k·W, (k+1)·W), at that interval's power (the
  hourly wind interpolated at the interval's midpoint), the cluster's state carried from one
  window to the next; a request's window says which interval it counts for.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pavana_data import WIND_CSV_ENV_VAR, external_wind_csv
CONTIGUOUS = ("2009070100", "2011010100")  # [first, end): no gaps in between
FARMS = ("wp1", "wp2", "wp3", "wp4", "wp5")
INTERVAL_S = 900.0  # one planning interval of wind time
HOUR_S = 3600.0


class WindDataMissing(FileNotFoundError):
    """The GEFCom2012 wind series is not where the experiment reads it from."""


@dataclass(frozen=True)
class Wind:
    stamps: tuple[str, ...]  # YYYYMMDDHH, hourly, contiguous
    values: np.ndarray  # (hours, farms), normalised to each farm's capacity
    farms: tuple[str, ...]

    def column(self, farm: str) -> np.ndarray:
        return self.values[:, self.farms.index(farm)]


def wind_path(explicit: str | Path | None = None) -> Path:
    """Where the Heron experiment reads GEFCom2012 from: the path given, else
    `PAVANA_WIND_CSV`, else the shared data folder beside the working directory; a clear error
    when none holds the file."""
    path = external_wind_csv(explicit)
    if path is None or not path.is_file():
        where = f"no file at {path}" if path is not None else "no path given"
        raise WindDataMissing(
            f"wind: the GEFCom2012 series is needed and not found ({where}). The Heron experiment replays the five "
            "farms' hourly output of GEFCom2012's wind track (gefcom2012_wind_5farms_hourly.csv: columns date, wp1..wp5); "
            "the data has no open licence, so Pavana does not carry it. Give its path with --wind PATH or "
            f"{WIND_CSV_ENV_VAR}=PATH, or keep the project's shared data folder beside the checkout "
            "(../shared/data/power/).")
    return path


def load_wind(path: str | Path | None = None) -> Wind:
    """The contiguous part of the GEFCom2012 series (`wind_path` finds it)."""
    path = wind_path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("date", *FARMS) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"wind {path.name}: missing columns {missing}")
        rows = [r for r in reader if CONTIGUOUS[0] <= r["date"] < CONTIGUOUS[1]]
    if not rows:
        raise ValueError(f"wind {path.name}: no rows in [{CONTIGUOUS[0]}, {CONTIGUOUS[1]})")
    values = np.array([[float(r[c]) for c in FARMS] for r in rows])
    return Wind(tuple(r["date"] for r in rows), values, FARMS)


def correlation(series: np.ndarray) -> np.ndarray:
    """Pearson correlation between columns (hours × sites)."""
    return np.corrcoef(np.asarray(series, dtype=float).T)


def least_correlated(values: np.ndarray, names: Sequence[str], k: int) -> tuple[str, ...]:
    """The `k` columns whose largest pairwise correlation is lowest (ties: lower mean)."""
    corr = correlation(values)
    best = min(itertools.combinations(range(len(names)), k),
               key=lambda idx: (max(corr[i, j] for i, j in itertools.combinations(idx, 2)),
                                np.mean([corr[i, j] for i, j in itertools.combinations(idx, 2)])))
    return tuple(names[i] for i in best)


def typical_window(series: np.ndarray, *, hours: int = 168, max_correlation: float = 0.3, mean_tolerance: float = 0.05) -> int:
    """The first hour offset, in steps of a week from the series' start, whose next `hours` have
    every pairwise correlation below `max_correlation` and a mean output within `mean_tolerance`
    of the long-run mean: a typical stretch of wind whose sites do not move together."""
    long_run = float(series.mean())
    for start in range(0, len(series) - hours + 1, 168):
        window = series[start:start + hours]
        corr = correlation(window)
        pairs = corr[np.triu_indices(corr.shape[0], 1)]
        if np.all(pairs < max_correlation) and abs(float(window.mean()) - long_run) <= mean_tolerance:
            return start
    raise ValueError(f"no {hours} h window has every pairwise correlation below {max_correlation} and mean within "
                     f"{mean_tolerance} of {long_run:.2f}")


def installed_replicas(normalised: np.ndarray, *, percentile: float, rated_w: float, replica_w: float) -> int:
    """Replicas a site installs: what its `percentile`-th percentile of wind power affords at
    full clock (`replica_w` each). Above that percentile, wind is spilled; below, GPUs idle or
    slow down."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile: must lie in (0, 100], got {percentile}")
    if rated_w <= 0 or replica_w <= 0:
        raise ValueError(f"rated_w, replica_w: must be > 0, got {rated_w}, {replica_w}")
    watts = float(np.percentile(np.asarray(normalised, dtype=float), percentile)) * rated_w
    return int(math.floor(watts / replica_w + 1e-9))


def interval_power(hourly: np.ndarray, start_hour: int, intervals: int, *, interval_s: float = INTERVAL_S) -> np.ndarray:
    """Each interval's power: the hourly series (linearly interpolated) at the interval's
    midpoint, `start_hour` being the row where interval 0 begins."""
    hourly = np.asarray(hourly, dtype=float)
    mid_hours = start_hour + (np.arange(intervals) + 0.5) * interval_s / HOUR_S
    if mid_hours[-1] > len(hourly) - 1:
        raise ValueError(f"interval_power: {intervals} intervals from row {start_hour} run past the series' {len(hourly)} rows")
    return np.interp(mid_hours, np.arange(len(hourly)), hourly)


def window_of(t_s: float, window_s: float) -> int:
    """The interval a simulated time belongs to (interval k is simulated in [k·W, (k+1)·W))."""
    if window_s <= 0:
        raise ValueError(f"window_s: must be > 0, got {window_s}")
    return int(math.floor(t_s / window_s + 1e-9))


def step_power(per_interval_w: Sequence[float], window_s: float):
    """Watts at simulated time t: interval k's power throughout its window (the last
    interval's beyond the end, while the run drains)."""
    watts = [float(w) for w in per_interval_w]

    def power_w(t_s: float) -> float:
        return watts[min(max(window_of(t_s, window_s), 0), len(watts) - 1)]

    return power_w


def window_arrivals(times_s: np.ndarray, period_s: float, k: int, window_s: float, load: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Interval k's arrivals in real time: the trace (periodic, `period_s` long) read from
    position k·W·load for W·load seconds, its gaps divided by `load` (load 1 replays it as
    recorded). Returns (indices into the trace, simulated arrival times in [k·W, (k+1)·W))."""
    if load <= 0 or window_s <= 0 or period_s <= 0:
        raise ValueError(f"load, window_s, period_s: must be > 0, got {load}, {window_s}, {period_s}")
    times_s = np.asarray(times_s, dtype=float)
    span = window_s * load
    begin = (k * span) % period_s
    idx, offsets = [], []
    position, remaining = begin, span
    done = 0.0
    while remaining > 1e-12:  # the read may wrap around the trace's end
        take = min(remaining, period_s - position)
        mask = (times_s >= position) & (times_s < position + take)
        hits = np.nonzero(mask)[0]
        idx.append(hits)
        offsets.append(done + times_s[hits] - position)
        done += take
        remaining -= take
        position = 0.0
    indices = np.concatenate(idx) if idx else np.array([], dtype=int)
    sim = k * window_s + (np.concatenate(offsets) if offsets else np.array([])) / load
    return indices, sim
