"""What the load generator saw of each request, kept raw (JSON lines) so any metric can be
recomputed later from the same run."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

OK = "ok"
HTTP_ERROR = "http_error"  # the server answered with a status other than 200
STREAM_ERROR = "stream_error"  # an error event inside a stream that had begun
TRANSPORT_ERROR = "transport_error"  # connection refused, reset, timed out
PROTOCOL_ERROR = "protocol_error"  # a body that is not the OpenAI stream format


@dataclass(slots=True)
class RequestRecord:
    """Times are seconds from the run's start on the client's monotonic clock. `arrival_s`
    is when the workload scheduled the request — its user's arrival — and `sent_s` when the
    client actually sent it; metrics count from the arrival, so lag in the client is never
    hidden, and `sent_s − arrival_s` shows it."""

    index: int
    qos_class: str
    path: str
    arrival_s: float
    prompt_tokens: int  # as planned (what the prompt was built to encode to)
    max_tokens: int
    num_images: int = 0
    warmup: bool = False
    sent_s: float | None = None
    chunk_times_s: list[float] = field(default_factory=list)  # every streamed chunk with text
    usage_prompt_tokens: int | None = None
    usage_completion_tokens: int | None = None
    finish_reason: str | None = None
    status: int | None = None
    outcome: str | None = None
    error: str | None = None
    done_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == OK


def write_records(path: str | Path, records: Iterable[RequestRecord]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(asdict(r)) + "\n")
    return path


def read_records(path: str | Path) -> list[RequestRecord]:
    records = []
    with Path(path).open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(RequestRecord(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as exc:
                raise ValueError(f"{path}:{line_number}: not a request record ({exc})") from None
    return records
