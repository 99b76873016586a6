"""`pavana bench router`: what the full HTTP path costs over calling the engine directly.

A 1-token generation, so the engine's work is tiny and the path dominates: (a) through the
OpenAI HTTP API (proxy ▸ ingress: auth, validation, tokenization ▸ colocated pool), against
(b) the colocated pool's deployment handle called from the driver. Both in one run, on the
same local Ray cluster and the same replica, at the same concurrency.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bench.common import command_line, machine_info, percentile, run_from_command_line, write_json
from benchmarks.local_serving import free_port

console = Console()
API_KEY = "bench-key"


async def _load(call, *, concurrency: int, total: int) -> tuple[list[float], float]:
    """Run `total` calls from `concurrency` workers; latencies (s) and wall time (s)."""
    latencies: list[float] = []
    remaining = iter(range(total))

    async def worker() -> None:
        for i in remaining:
            start = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def main(quick: bool = False, json_path: Path | None = None) -> dict[str, Any]:
    import ray
    from ray import serve

    from cluster.spec import ClusterSpec
    from controller.serving import start_serving
    from workers.engine.default_model import ensure_default_model
    from workers.engine.sampling import SamplingParams
    from workers.requests import GenerateRequest

    total = 200 if quick else 1000
    concurrency = 16
    with tempfile.TemporaryDirectory() as tmp:
        model = ensure_default_model(Path(tmp))
        spec = ClusterSpec.parse({
            "model": {"path": str(model)},
            "topology": "colocated",
            "pools": {"colocated": {}},
            "engine": {"num_threads": 1},
            "http_port": free_port(),
            "grpc_port": free_port(),
            "api_keys": [API_KEY],
            "telemetry_prefix": f"bench:{time.time_ns()}",
        })
        ray.init(address="local", num_cpus=4, resources={"site.local": 10}, include_dashboard=False, log_to_driver=False)
        try:
            start_serving(spec)
            handle = serve.get_deployment_handle("colocated-local", app_name="pavana")
            prompt_ids = [1, 72, 101, 108]
            body = {"model": spec.model.name, "prompt": "Hello", "max_tokens": 1, "temperature": 0}

            async def run() -> dict[str, Any]:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{spec.http_port}", timeout=60,
                                             headers={"Authorization": f"Bearer {API_KEY}"}) as client:
                    async def http_call(i: int) -> None:
                        r = await client.post("/v1/completions", json=body)
                        r.raise_for_status()

                    async def direct_call(i: int) -> None:
                        request = GenerateRequest(f"direct-{i}-{time.time_ns()}", prompt_ids, SamplingParams(max_tokens=1))
                        async for _ in handle.options(stream=True).generate.remote(request):
                            pass

                    await _load(http_call, concurrency=concurrency, total=32)  # warm-up, excluded
                    await _load(direct_call, concurrency=concurrency, total=32)
                    http_lat, http_s = await _load(http_call, concurrency=concurrency, total=total)
                    direct_lat, direct_s = await _load(direct_call, concurrency=concurrency, total=total)
                    return {"http": (http_lat, http_s), "direct": (direct_lat, direct_s)}

            measured = asyncio.run(run())
        finally:
            serve.shutdown()
            ray.shutdown()
    (http_lat, http_s), (direct_lat, direct_s) = measured["http"], measured["direct"]
    result = {
        "benchmark": "router",
        "quick": quick,
        "machine": machine_info(),
        "command": command_line(),
        "requests": total,
        "concurrency": concurrency,
        "http_requests_per_s": total / http_s,
        "direct_requests_per_s": total / direct_s,
        "http_p50_ms": percentile(http_lat, 50) * 1e3,
        "http_p99_ms": percentile(http_lat, 99) * 1e3,
        "direct_p50_ms": percentile(direct_lat, 50) * 1e3,
        "direct_p99_ms": percentile(direct_lat, 99) * 1e3,
    }
    result["http_overhead_p50_ms"] = result["http_p50_ms"] - result["direct_p50_ms"]
    table = Table(title=f"1-token generations, {total} requests at concurrency {concurrency}")
    for col in ("path", "requests/s", "p50 (ms)", "p99 (ms)"):
        table.add_column(col, justify="left" if col == "path" else "right")
    table.add_row("HTTP (proxy ▸ ingress ▸ colocated pool)", f"{result['http_requests_per_s']:.1f}", f"{result['http_p50_ms']:.1f}", f"{result['http_p99_ms']:.1f}")
    table.add_row("deployment handle ▸ colocated pool", f"{result['direct_requests_per_s']:.1f}", f"{result['direct_p50_ms']:.1f}", f"{result['direct_p99_ms']:.1f}")
    console.print(table)
    console.print(f"HTTP path overhead at the median: {result['http_overhead_p50_ms']:.1f} ms")
    write_json(json_path, result)
    return result


if __name__ == "__main__":
    run_from_command_line(main, __doc__)
