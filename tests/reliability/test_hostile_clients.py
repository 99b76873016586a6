"""Clients that misbehave at the connection level, against a real application: streams
abandoned after their first chunk, bodies cut off or left trickling, and a burst of hostile
requests at once. None of it may leave work behind in the engine or hold up other clients."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.reliability.conftest import APP_NAME, CONTEXT_TOKENS, HostileApp
from tests.reliability.hostile_inputs import data_url, image_message, png_bomb

pytestmark = [pytest.mark.ray, pytest.mark.redis]


def engine_stats(hostile_app: HostileApp) -> dict:
    from ray import serve

    handle = serve.get_deployment_handle("colocated-local", app_name=APP_NAME)
    return handle.stats.remote().result(timeout_s=30)


def wait_idle(hostile_app: HostileApp, timeout_s: float = 20.0) -> dict:
    """The engine's state once nothing runs or waits, with every KV block free again."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = engine_stats(hostile_app)
        idle = stats["running"] == 0 and stats["waiting"] == 0 and stats["free_kv_blocks"] == stats["total_kv_blocks"]
        if idle or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def plain_request(hostile_app: HostileApp) -> httpx.Response:
    body = {"model": hostile_app.model, "prompt": "Hello", "max_tokens": 2, "temperature": 0}
    return httpx.post(f"{hostile_app.base_url}/completions", json=body, headers=hostile_app.auth, timeout=60)


async def recorded_requests(hostile_app: HostileApp, request_ids: set[str], timeout_s: float = 15.0) -> dict:
    """The ingress's records of these requests, from Redis (written in batches, off the path)."""
    from cluster.telemetry import TelemetryStore

    store = TelemetryStore.from_spec(hostile_app.spec)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            snapshot = await store.snapshot()
            found = {r.request_id: r for r in snapshot.requests if r.request_id in request_ids}
            if len(found) == len(request_ids) or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.3)
    finally:
        await store.close()


def test_streams_abandoned_after_their_first_chunk_leave_nothing_running(hostile_app):
    max_tokens = CONTEXT_TOKENS - 8
    body = {"model": hostile_app.model, "prompt": "wind", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}

    async def abandon(client: httpx.AsyncClient) -> str:
        async with client.stream("POST", "/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    return json.loads(line.removeprefix("data: "))["id"]  # leave the rest unread

    async def abandon_several() -> list[str]:
        async with httpx.AsyncClient(base_url=hostile_app.base_url, headers=hostile_app.auth, timeout=60) as client:
            return await asyncio.gather(*(abandon(client) for _ in range(6)))

    ids = set(asyncio.run(abandon_several()))
    assert len(ids) == 6
    records = asyncio.run(recorded_requests(hostile_app, ids))
    assert set(records) == ids
    assert all(r.outcome == "aborted" and r.output_tokens < max_tokens for r in records.values()), records
    stats = wait_idle(hostile_app)
    assert stats["running"] == 0 and stats["waiting"] == 0, stats
    assert stats["free_kv_blocks"] == stats["total_kv_blocks"], stats
    assert plain_request(hostile_app).status_code == 200


def test_a_body_cut_off_or_trickling_holds_up_no_one(hostile_app):
    url = urlsplit(hostile_app.root_url)
    head = (
        f"POST {url.path}/v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {hostile_app.auth['Authorization'][7:]}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    ).encode()
    # One client sends a tenth of its body and hangs up; another sends a tenth and waits.
    with socket.create_connection((url.hostname, url.port), timeout=10) as cut:
        cut.sendall(head + b'{"model": "' + b"x" * 89)
    with socket.create_connection((url.hostname, url.port), timeout=10) as trickle:
        trickle.sendall(head + b'{"model": "' + b"x" * 89)
        started = time.monotonic()
        response = plain_request(hostile_app)
        assert response.status_code == 200 and time.monotonic() - started < 10
    assert plain_request(hostile_app).status_code == 200


async def test_a_burst_of_hostile_requests_at_once(hostile_app):
    bomb = data_url(png_bomb(20000, 20000))
    m = hostile_app.model
    bad = [
        ("/completions", b"{not json"),
        ("/completions", b'{"model": "' + m.encode() + b'", "prompt": "hi", "temperature": 9}'),
        ("/completions", b'{"model": "' + m.encode() + b'", "prompt": [' + b"5," * 500 + b'5]}'),
        ("/chat/completions", httpx.Request("POST", "/", json={"model": m, "messages": image_message(bomb)}).read()),
        ("/chat/completions", b'{"model": "' + m.encode() + b'", "messages": []}'),
    ]
    async with httpx.AsyncClient(base_url=hostile_app.base_url, headers={**hostile_app.auth, "content-type": "application/json"}, timeout=60) as client:
        started = time.monotonic()
        responses = await asyncio.gather(*(client.post(path, content=body) for _ in range(12) for path, body in bad))
        elapsed = time.monotonic() - started
    statuses = sorted({r.status_code for r in responses})
    assert statuses == [400], [(r.status_code, r.text[:200]) for r in responses if r.status_code != 400][:3]
    assert all(set(r.json()) == {"error"} for r in responses)
    assert elapsed < 30, f"{len(responses)} refusals took {elapsed:.1f} s"
    assert plain_request(hostile_app).status_code == 200
