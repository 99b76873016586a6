"""Replaying a power series (a wind farm's output) against wall-clock time, so that
experiments with sites whose power comes and goes are repeatable.

A series comes from a CSV file (`TracePower`: a recording such as GEFCom2012's farms) or from
Pavana's built-in wind model (`WindPower`, `cluster.wind`); both are hourly and normalised to
the farm's capacity (0..1). A site's `scale_w` turns them into watts, `start` picks where the
replay begins and `speed` how many series seconds pass per wall second. Between two points the
power is interpolated linearly; at the end the replay wraps around to the beginning.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SECONDS_PER_ROW = 3600.0  # traces and the wind model are hourly


@dataclass(frozen=True)
class PowerTrace:
    column: str
    stamps: tuple[str, ...]  # the trace's first column, for `start` by timestamp
    values: np.ndarray  # one value per row, in the trace's units

    @classmethod
    def from_csv(cls, path: str | Path, column: str) -> PowerTrace:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"power.path: no trace file at {path}")
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            if column not in fields:
                raise ValueError(f"power.column: {column!r} is not a column of {path.name} (columns: {fields[1:]})")
            rows = [(r[fields[0]], r[column]) for r in reader if r[column] not in ("", None)]
        if not rows:
            raise ValueError(f"power.column: {column!r} of {path.name} has no values")
        return cls(column, tuple(stamp for stamp, _ in rows), np.array([float(v) for _, v in rows]))

    @classmethod
    def from_wind_model(cls, farm: str, *, seed: int, hours: int) -> PowerTrace:
        """One farm of the built-in wind model's joint sample; its stamps are hour numbers."""
        from cluster.wind import GEFCOM_LIKE, builtin_series

        series = builtin_series(seed, hours)[:, GEFCOM_LIKE.farm_index(farm)]
        return cls(farm, tuple(str(h) for h in range(hours)), series)

    @classmethod
    def from_source(cls, source: Any) -> PowerTrace:
        """The series a spec's `TracePower` or `WindPower` names."""
        if source.kind == "wind":
            return cls.from_wind_model(source.farm, seed=source.seed, hours=source.hours)
        return cls.from_csv(source.path, source.column)

    def start_index(self, start: int | str | None) -> int:
        """A row offset, or the row whose first column equals `start` (e.g. '2010010100')."""
        if start is None:
            return 0
        if isinstance(start, int):
            if not 0 <= start < len(self.values):
                raise ValueError(f"power.start: row {start} is outside the trace's {len(self.values)} rows")
            return start
        try:
            return self.stamps.index(start)
        except ValueError:
            raise ValueError(f"power.start: {start!r} is not a timestamp of the trace") from None


def power_at(trace: PowerTrace, *, start_index: int, speed: float, scale_w: float, elapsed_s: float) -> float:
    """Watts `elapsed_s` wall seconds after the replay began (pure)."""
    position = start_index + max(0.0, elapsed_s) * speed / SECONDS_PER_ROW
    n = len(trace.values)
    low = int(np.floor(position))
    frac = position - low
    a, b = trace.values[low % n], trace.values[(low + 1) % n]
    return float((a + (b - a) * frac) * scale_w)


class TraceReplayer:
    """The adapter from a spec's `TracePower` or `WindPower` to watts over wall-clock time."""

    def __init__(self, source: Any) -> None:
        self.trace = PowerTrace.from_source(source)
        self.start_index = self.trace.start_index(source.start)
        self.speed = source.speed
        self.scale_w = source.scale_w

    def power_w(self, elapsed_s: float) -> float:
        return power_at(self.trace, start_index=self.start_index, speed=self.speed, scale_w=self.scale_w, elapsed_s=elapsed_s)
