"""One measurement of `pavana bench router` in a process of its own: start a local cluster with
one ingress mode, then time 1-token generations over HTTP and through the pool's handle, at
concurrency 1 and 16. Usage: `python -m benchmarks.router_mode MODE N_C1 N_C16 OUT.json`."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from controller.ingress_mode import apply

API_KEY = "bench-key"
WARM_UP = 24


async def timed_calls(call, *, concurrency: int, total: int) -> tuple[list[float], float]:
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


def measure(mode: str, requests_c1: int, requests_c16: int) -> dict[str, Any]:
    apply(mode)  # before Ray starts: its processes read the mode from the environment
    import httpx
    import ray
    from ray import serve

    from bench.common import percentile
    from benchmarks.local_serving import free_port
    from cluster.spec import ClusterSpec
    from controller.grpc_host import runtime_env
    from controller.serving import start_serving
    from workers.engine.default_model import ensure_default_model
    from workers.engine.sampling import SamplingParams
    from workers.requests import GenerateRequest

    with tempfile.TemporaryDirectory() as tmp:
        model = ensure_default_model(Path(tmp))
        spec = ClusterSpec.parse({
            "model": {"path": str(model)}, "topology": "colocated", "pools": {"colocated": {}}, "engine": {"num_threads": 1},
            "http_port": free_port(), "grpc_port": free_port(), "api_keys": [API_KEY], "telemetry_prefix": f"bench:{time.time_ns()}",
        })
        ray.init(address="local", num_cpus=4, resources={"site.local": 10}, include_dashboard=False, log_to_driver=False,
                 runtime_env=runtime_env("127.0.0.1"))
        try:
            start_serving(spec)
            handle = serve.get_deployment_handle("colocated-local", app_name="pavana")
            body = {"model": spec.model.name, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
            prompt_ids = [1, 72, 101, 108]

            async def run() -> dict[str, Any]:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{spec.http_port}", timeout=60,
                                             headers={"Authorization": f"Bearer {API_KEY}"}) as client:
                    async def http_call(i: int) -> None:
                        (await client.post("/v1/completions", json=body)).raise_for_status()

                    async def handle_call(i: int) -> None:
                        request = GenerateRequest(f"direct-{i}-{time.time_ns()}", prompt_ids, SamplingParams(max_tokens=1))
                        async for _ in handle.options(stream=True).generate.remote(request):
                            pass

                    for call in (http_call, handle_call):  # warm-up, excluded
                        await timed_calls(call, concurrency=4, total=WARM_UP)
                    http1, _ = await timed_calls(http_call, concurrency=1, total=requests_c1)
                    direct1, _ = await timed_calls(handle_call, concurrency=1, total=requests_c1)
                    http16, http_s = await timed_calls(http_call, concurrency=16, total=requests_c16)
                    direct16, direct_s = await timed_calls(handle_call, concurrency=16, total=requests_c16)
                    return {
                        "http_p50_ms_c1": percentile(http1, 50) * 1e3, "direct_p50_ms_c1": percentile(direct1, 50) * 1e3,
                        "http_p50_ms": percentile(http16, 50) * 1e3, "direct_p50_ms": percentile(direct16, 50) * 1e3,
                        "http_p99_ms": percentile(http16, 99) * 1e3, "direct_p99_ms": percentile(direct16, 99) * 1e3,
                        "http_requests_per_s": requests_c16 / http_s, "direct_requests_per_s": requests_c16 / direct_s,
                    }

            # A loop that outlives the run: with Ray Serve's throughput-optimized settings the
            # driver's handles are bound to it, and shutting them down needs it open.
            loop = asyncio.new_event_loop()
            out = loop.run_until_complete(run())
        finally:
            serve.shutdown()
            ray.shutdown()
    out["mode"] = mode
    out["http_overhead_p50_ms_c1"] = out["http_p50_ms_c1"] - out["direct_p50_ms_c1"]
    out["http_overhead_p50_ms"] = out["http_p50_ms"] - out["direct_p50_ms"]
    out["http_vs_direct_throughput"] = out["http_requests_per_s"] / out["direct_requests_per_s"]
    return out


if __name__ == "__main__":
    mode, n1, n16, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    path.write_text(json.dumps(measure(mode, n1, n16)))
