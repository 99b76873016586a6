"""The open-loop load generator: every request leaves at its scheduled time, whatever the
server is doing.

A closed loop (a fixed number of clients, each waiting for its answer before sending the
next) slows down with the server and so can never show it overloaded — the coordinated
omission that Etalon lists among the anti-patterns of evaluation. Here a dispatcher sleeps
until each arrival and starts the request as its own task; streams are read concurrently on
one event loop over a pool of HTTP connections (`httpx`), and the time of every streamed
chunk is recorded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.records import HTTP_ERROR, OK, PROTOCOL_ERROR, STREAM_ERROR, TRANSPORT_ERROR, RequestRecord
from bench.workload import HTTPRequest

# Started this long after the schedule is fixed, so the first sends are not late already.
START_LEAD_S = 0.05
MAX_ERROR_CHARS = 500


def chunk_text(payload: dict) -> str:
    """The text of a completion chunk (`choices[0].text`) or a chat chunk (`delta.content`)."""
    choices = payload.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "delta" in choice:
        return (choice.get("delta") or {}).get("content") or ""
    return choice.get("text") or ""


async def _send(client: httpx.AsyncClient, request: HTTPRequest, record: RequestRecord, clock) -> None:
    record.sent_s = clock()
    try:
        async with client.stream("POST", request.path.lstrip("/"), json=request.body, headers=request.headers) as response:
            record.status = response.status_code
            if response.status_code != 200:
                body = (await response.aread()).decode("utf-8", "replace")
                record.outcome, record.error = HTTP_ERROR, body[:MAX_ERROR_CHARS]
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = clock()
                try:
                    payload = json.loads(data)
                except json.JSONDecodeError:
                    record.outcome, record.error = PROTOCOL_ERROR, f"not JSON: {data[:200]}"
                    return
                if "error" in payload:
                    record.outcome, record.error = STREAM_ERROR, json.dumps(payload["error"])[:MAX_ERROR_CHARS]
                    continue
                if payload.get("usage"):
                    record.usage_prompt_tokens = payload["usage"].get("prompt_tokens")
                    record.usage_completion_tokens = payload["usage"].get("completion_tokens")
                if chunk_text(payload):
                    record.chunk_times_s.append(now)
                choices = payload.get("choices") or []
                if choices and choices[0].get("finish_reason"):
                    record.finish_reason = choices[0]["finish_reason"]
            if record.outcome is None:
                record.outcome = OK
    except httpx.HTTPError as exc:
        record.outcome, record.error = TRANSPORT_ERROR, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    finally:
        record.done_s = clock()


async def run_load(
    base_url: str,
    requests: Sequence[HTTPRequest],
    *,
    api_key: str | None = None,
    warmup: int = 0,
    timeout_s: float = 300.0,
    max_connections: int = 1024,
    progress: bool = True,
) -> list[RequestRecord]:
    """Send `requests` at their arrival times (seconds from the start) to the OpenAI API at
    `base_url` (ending in `/v1`); returns one record per request, in request order. The first
    `warmup` requests by arrival are marked so reports can leave them out."""
    order = sorted(range(len(requests)), key=lambda i: requests[i].planned.arrival_s)
    warm = set(order[:warmup])
    records = [
        RequestRecord(
            index=r.planned.index, qos_class=r.planned.qos_class, path=r.path, arrival_s=r.planned.arrival_s,
            prompt_tokens=r.planned.prompt_tokens, max_tokens=r.planned.output_tokens, num_images=r.planned.num_images,
            warmup=i in warm,
        )
        for i, r in enumerate(requests)
    ]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    timeout = httpx.Timeout(connect=30.0, read=timeout_s, write=30.0, pool=None)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[state]}"), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("requests", total=len(requests), state="")
        failed = 0

        def finished(record: RequestRecord) -> None:
            nonlocal failed
            failed += record.outcome != OK
            bar.update(task, advance=1, state=f"failed {failed}")

        async with httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", headers=headers, limits=limits, timeout=timeout) as client:
            start = time.perf_counter() + START_LEAD_S

            def clock() -> float:
                return time.perf_counter() - start

            async def one(i: int) -> None:
                await _send(client, requests[i], records[i], clock)
                finished(records[i])

            tasks = []
            for i in order:
                delay = requests[i].planned.arrival_s - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
    return records
