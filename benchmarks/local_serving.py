"""What the benchmarks that drive a live local cluster share: start Ray and Serve on free
ports, deploy one spec under its own name, and replay synthetic open-loop traffic against it
through the OpenAI HTTP API with the harness in `bench/`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

API_KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class LocalServe:
    http_port: int
    grpc_port: int


@contextmanager
def local_serve(num_cpus: int = 4) -> Iterator[LocalServe]:
    """A local Ray cluster with Serve's HTTP proxy on a free port; shut down afterwards."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions

    ports = LocalServe(free_port(), free_port())
    ray.init(address="local", num_cpus=num_cpus, resources={"site.local": 1000}, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=ports.http_port))
        yield ports
    finally:
        serve.shutdown()
        ray.shutdown()


@contextmanager
def deployed(spec: Any, name: str, ports: LocalServe) -> Iterator[str]:
    """Deploy `spec` as application `name`; yields its OpenAI base URL; deletes it after."""
    from ray import serve

    from controller.app import build_app

    serve.run(build_app(spec), name=name, route_prefix=f"/{name}")
    try:
        yield f"http://127.0.0.1:{ports.http_port}/{name}/v1"
    finally:
        serve.delete(name)


def poisson_requests(
    url: str, tokenizer: Any, *, rate: float, duration_s: float, classes: dict[str, float],
    prompt_tokens: int, output_tokens: int, seed: int,
) -> list:
    """Open-loop Poisson arrivals at `rate` for `duration_s`, fixed lengths, classes drawn by share."""
    from bench.prompts import PromptFactory
    from bench.serve import served_model
    from bench.workload import http_requests, plan, synthetic_arrivals

    model, max_context = served_model(url, API_KEY)
    arrivals = synthetic_arrivals("poisson", rate, count=None, duration_s=duration_s, cv=1.0, seed=seed)
    planned, _ = plan(arrivals, [(prompt_tokens, output_tokens)], class_mix=classes, max_context_tokens=max_context, seed=seed)
    return http_requests(planned, PromptFactory(tokenizer, seed=seed), model=model, seed=seed)


def replay(url: str, requests: list, *, warmup: int = 0, progress: bool = True) -> list:
    from bench.client import run_load

    return asyncio.run(run_load(url, requests, api_key=API_KEY, warmup=warmup, progress=progress))
