"""Control rounds as JSON lines: what a round observed, the memory it started from and what it
decided, one line a round. The reconcile loop writes them when asked (`pavana up --record`),
for debugging and so that a round recorded on a live cluster can be replayed through the
simulator's control path and compared field for field (tests/controller/test_reconcile.py).

JSON, never pickles; infinities (a latency budget without a limit, the age of a snapshot that
never was) are written as `Infinity`, which Python's JSON reader takes back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from autoscaler.round import Observation, RoundMemory, RoundResult

ROUND_LOG_VERSION = 1


class RecordedRound(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="constants", extra="forbid", frozen=True)

    version: int = ROUND_LOG_VERSION
    observation: Observation
    memory: RoundMemory  # what the round started from
    result: RoundResult


def dump_round(observation: Observation, memory: RoundMemory, result: RoundResult) -> str:
    return RecordedRound(observation=observation, memory=memory, result=result).model_dump_json()


def read_rounds(path: str | Path) -> Iterator[RecordedRound]:
    """Every round in a log, in order; a line of another version is an error, not skipped."""
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            recorded = RecordedRound.model_validate_json(line)
            if recorded.version != ROUND_LOG_VERSION:
                raise ValueError(f"{path}:{number}: round log version {recorded.version}; this Pavana reads {ROUND_LOG_VERSION}")
            yield recorded
