"""`pavana bench soak`: a bounded soak at 80% of a local cluster's capacity; it stops by itself.

One prefill and one decode replica (beside an idle vision replica) serve Poisson text traffic
in back-to-back segments of 30 s for the stated minutes. After every
segment the resident memory of every Ray process is sampled; at the end, once traffic has
drained, every replica's heartbeat must show all KV blocks free. The capacity is measured first
as in `pavana bench overload` (interactive TTFT within its SLO).

Reports lost requests (any that did not finish with 200 and all its tokens), memory growth per
process from the first sample after warm-up to the last (bound: `MEMORY_BOUND_MB` or
`MEMORY_BOUND_SHARE`, whichever is larger), and leaked KV blocks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from bench.common import command_line, machine_info, run_from_command_line, write_json
from benchmarks.local_serving import API_KEY, deployed, local_serve, poisson_requests, replay
from benchmarks.overload import OUTPUT_TOKENS, PROMPT_TOKENS, find_capacity

console = Console()
LOAD = 0.8
SEGMENT_S = 30.0
MEMORY_BOUND_MB = 64.0
MEMORY_BOUND_SHARE = 0.10


def spec_for(ports):
    from cluster.spec import ClusterSpec

    one = {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}
    return ClusterSpec.parse({
        "pools": {"vision": one, "prefill": one, "decode": one},
        "engine": {"num_threads": 1},
        "qos_classes": [{"name": "interactive", "slo": {"ttft_s": 1.5, "tbt_s": 0.5}}],
        "api_keys": [API_KEY],
        "telemetry_prefix": f"bench-soak:{uuid.uuid4().hex}",
        "http_port": ports.http_port,
        "grpc_port": ports.grpc_port,
    })


def ray_processes() -> dict[int, str]:
    """Every process of the local Ray session (workers, raylet, GCS), by pid."""
    found = {}
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if cmd.startswith("ray::") or "raylet" in cmd or "gcs_server" in cmd or "default_worker.py" in cmd:
            found[proc.info["pid"]] = cmd.split(" ")[0][:60]
    return found


def rss_mb(pids: dict[int, str]) -> dict[int, float]:
    sizes = {}
    for pid in pids:
        try:
            sizes[pid] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            continue
    return sizes


def lost(records: list) -> int:
    return sum(1 for r in records if not r.ok or r.usage_completion_tokens != r.max_tokens)


async def kv_state(spec, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    from cluster.telemetry import TelemetryStore

    store = TelemetryStore.from_spec(spec)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            beats = [h for h in (await store.snapshot()).heartbeats if h.total_kv_blocks > 0]
            if (beats and all(h.free_kv_blocks == h.total_kv_blocks for h in beats)) or time.monotonic() > deadline:
                return [{"replica": f"{h.pool}@{h.site}:{h.replica_id}", "free": h.free_kv_blocks, "total": h.total_kv_blocks} for h in beats]
            await asyncio.sleep(0.5)
    finally:
        await store.clear()
        await store.close()


def main(quick: bool = False, json_path: Path | None = None, minutes: float | None = None) -> dict[str, Any]:
    from workers.engine.default_model import ensure_default_model
    from workers.engine.tokenizer import Tokenizer

    minutes = minutes if minutes is not None else (2.0 if quick else 10.0)
    tokenizer = Tokenizer.from_dir(ensure_default_model())
    started = time.perf_counter()
    with local_serve() as ports:
        spec = spec_for(ports)
        with deployed(spec, "soak", ports) as url:
            capacity, _, probes = find_capacity(url, tokenizer, spec, 15.0 if quick else 30.0)
            rate = LOAD * capacity
            segments = max(2, round(minutes * 60 / SEGMENT_S))
            console.print(f"capacity {capacity:.2f} req/s; soaking at {rate:.2f} req/s for {segments} × {SEGMENT_S:.0f} s")
            samples: list[dict[int, float]] = []
            names: dict[int, str] = {}
            sent = lost_total = 0
            for k in range(segments):
                requests = poisson_requests(url, tokenizer, rate=rate, duration_s=SEGMENT_S, classes={"interactive": 1.0},
                                            prompt_tokens=PROMPT_TOKENS, output_tokens=OUTPUT_TOKENS, seed=1000 + k)
                records = replay(url, requests, progress=False)
                sent += len(records)
                lost_total += lost(records)
                names.update(ray_processes())
                samples.append(rss_mb(names))
                console.print(f"segment {k + 1}/{segments}: {len(records)} requests, lost so far {lost_total}, "
                              f"Ray processes {sum(samples[-1].values()):.0f} MB")
            kv = asyncio.run(kv_state(spec))
    first, last = samples[1], samples[-1]  # the first segment is warm-up: caches fill, lazy imports load
    growth = {
        pid: {"process": names[pid], "first_mb": first[pid], "last_mb": last[pid], "growth_mb": last[pid] - first[pid]}
        for pid in first.keys() & last.keys()
    }
    worst = max(growth.values(), key=lambda g: g["growth_mb"]) if growth else None
    bounded = all(g["growth_mb"] <= max(MEMORY_BOUND_MB, MEMORY_BOUND_SHARE * g["first_mb"]) for g in growth.values())
    leaked = sum(r["total"] - r["free"] for r in kv)
    result = {
        "benchmark": "soak",
        "quick": quick,
        "machine": machine_info(),
        "command": command_line(),
        "wall_s": time.perf_counter() - started,
        "minutes": minutes,
        "capacity_rps": capacity,
        "capacity_probes": probes,
        "rate_rps": rate,
        "requests": sent,
        "lost_requests": lost_total,
        "memory_bound": {"mb": MEMORY_BOUND_MB, "share": MEMORY_BOUND_SHARE},
        "memory_flat": bounded,
        "worst_memory_growth": worst,
        "processes": list(growth.values()),
        "kv_blocks": kv,
        "leaked_kv_blocks": leaked,
    }
    table = Table(title=f"Soak: {minutes:.0f} min at {rate:.2f} req/s (80% of {capacity:.2f})")
    for col in ("requests", "lost", "worst RSS growth", "memory flat", "leaked KV blocks"):
        table.add_column(col, justify="right")
    table.add_row(str(sent), str(lost_total), f"{worst['growth_mb']:+.1f} MB ({worst['process']})" if worst else "–",
                  "yes" if bounded else "NO", str(leaked))
    console.print(table)
    write_json(json_path, result)
    return result


if __name__ == "__main__":
    run_from_command_line(main, __doc__)
