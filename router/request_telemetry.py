"""What the router records of every request: TTFT, every gap between tokens, tokens, outcome.

`measured` wraps a request's token stream without changing it; when the stream ends — done,
failed or abandoned by the client — one `RequestRecord` goes to the publisher, which writes to
Redis in batches off the request path (and drops, counting, while Redis is away).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import numpy as np

from cluster.records import RequestRecord
from workers.requests import TokenChunk


def tbt_percentiles(token_times: list[float]) -> tuple[float | None, float | None]:
    """P50 and P99 of the gaps between consecutive token arrivals (None with fewer than two)."""
    if len(token_times) < 2:
        return None, None
    gaps = np.diff(np.asarray(token_times))
    return float(np.percentile(gaps, 50)), float(np.percentile(gaps, 99))


async def measured(
    stream: AsyncIterator[TokenChunk],
    publish: Callable[[RequestRecord], None],
    *,
    request_id: str,
    qos_class: str,
    site: str | Callable[[], str],
    pool_path: str,
    prompt_tokens: int,
    num_images: int,
    observe: Callable[[RequestRecord, float, list[float]], None] | None = None,
) -> AsyncIterator[TokenChunk]:
    """`observe`, when given, also gets the record with the end-to-end seconds and every gap
    between tokens (the ingress's Prometheus metrics, `controller/metrics.py`). `site` may be
    a function, read as the request ends: where it ran last (a lost site's requests move)."""
    started = time.monotonic()
    token_times: list[float] = []
    outcome = "aborted"
    output_tokens = 0
    try:
        async for chunk in stream:
            now = time.monotonic()
            token_times.extend([now] * len(chunk.token_ids))
            output_tokens += len(chunk.token_ids)
            yield chunk
            if chunk.finished:
                outcome = "ok"
    except Exception:
        outcome = "error"
        raise
    finally:
        p50, p99 = tbt_percentiles(token_times)
        record = RequestRecord(
            request_id=request_id,
            qos_class=qos_class,
            site=site() if callable(site) else site,
            pool_path=pool_path,
            ttft_s=token_times[0] - started if token_times else None,
            tbt_p50_s=p50,
            tbt_p99_s=p99,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            outcome=outcome,
            timestamp_s=time.time(),
            num_images=num_images,
        )
        publish(record)
        if observe is not None:
            observe(record, time.monotonic() - started, np.diff(np.asarray(token_times)).tolist())
