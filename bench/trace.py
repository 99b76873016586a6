"""Request traces in Azure's LLM inference format: arrivals and lengths of real traffic.

Columns `TIMESTAMP, ContextTokens, GeneratedTokens`, and optionally `NumImages` (Azure's
multimodal trace, the ModServe paper's data). Replaying a production trace keeps its bursts
and its length mix, which synthetic Poisson arrivals with fixed lengths smooth away.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

REQUIRED_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
IMAGES_COLUMN = "NumImages"


class TraceError(ValueError):
    """A trace file that cannot be replayed; the message names the file, line and column."""


@dataclass(frozen=True, slots=True)
class TraceRow:
    arrival_s: float  # from the first request of the slice
    context_tokens: int
    generated_tokens: int
    num_images: int = 0


def _timestamp(value: str, where: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise TraceError(f"{where}: TIMESTAMP {value!r} is not a date and time like '2023-11-16 18:15:46.6805900'") from None


def _count(value: str, column: str, where: str, minimum: int) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise TraceError(f"{where}: {column} {value!r} is not an integer") from None
    if number < minimum:
        raise TraceError(f"{where}: {column} must be >= {minimum}, got {number}")
    return number


def read_azure_trace(path: str | Path, *, start: int = 0, limit: int | None = None) -> list[TraceRow]:
    """Rows `start` … `start + limit − 1` of the trace (in file order), arrivals re-based to
    the first of them and sorted by arrival. A request with no output tokens cannot be
    streamed and is refused with its line number, as is any malformed row."""
    path = Path(path)
    if start < 0:
        raise TraceError(f"start: must be >= 0, got {start}")
    if limit is not None and limit < 1:
        raise TraceError(f"limit: must be >= 1, got {limit}")
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read the trace ({exc.strerror or exc})") from None
    with handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise TraceError(f"{path}: missing columns {missing}; an Azure LLM trace has {list(REQUIRED_COLUMNS)} (and optionally {IMAGES_COLUMN})")
        reader.fieldnames = header
        raw: list[tuple[dt.datetime, int, int, int]] = []
        for number, row in enumerate(reader):
            if number < start:
                continue
            if limit is not None and len(raw) >= limit:
                break
            where = f"{path}:{reader.line_num}"
            if None in row.values() or None in row:
                raise TraceError(f"{where}: expected {len(header)} fields")
            raw.append((
                _timestamp(row["TIMESTAMP"], where),
                _count(row["ContextTokens"], "ContextTokens", where, 1),
                _count(row["GeneratedTokens"], "GeneratedTokens", where, 1),
                _count(row[IMAGES_COLUMN], IMAGES_COLUMN, where, 0) if IMAGES_COLUMN in header else 0,
            ))
    if not raw:
        raise TraceError(f"{path}: no requests from row {start} on")
    raw.sort(key=lambda r: r[0])
    first = raw[0][0]
    return [TraceRow((t - first).total_seconds(), c, g, i) for t, c, g, i in raw]
