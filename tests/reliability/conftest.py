"""The application that the hostile-input tests send their requests to, beside whatever else
the session's Ray cluster serves: `hostile-test` at `/hostile`, with an API key, its own
telemetry prefix, one engine thread per replica, and a short context (128 tokens) so that
every valid request the fuzzers make finishes in a few decode steps.

It is colocated (one engine replica) with a vision pool, so image requests cross a real
vision replica. It lives for the whole `tests/reliability` package: deployed by the first
test that asks for it, deleted (with its telemetry) after the last.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

API_KEY = "hostile-key"
APP_NAME = "hostile-test"
ROUTE_PREFIX = "/hostile"
CONTEXT_TOKENS = 128


@dataclass(frozen=True)
class HostileApp:
    spec: object
    root_url: str  # the application's root: /hostile
    grpc_address: str

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def model(self) -> str:
        return self.spec.model.name

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    @property
    def grpc_metadata(self) -> list[tuple[str, str]]:
        return [("application", APP_NAME), ("x-api-key", API_KEY)]


def hostile_spec(ports):
    from cluster.spec import ClusterSpec

    one = {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}
    return ClusterSpec.parse({
        "model": {"max_model_len": CONTEXT_TOKENS},
        "engine": {"num_threads": 1},
        "topology": "colocated",
        "pools": {"colocated": one, "vision": one},
        "http_port": ports.http_port,
        "grpc_port": ports.grpc_port,
        "api_keys": [API_KEY],
        "telemetry_prefix": f"test:{uuid.uuid4().hex}",
    })


# Module scope, not package: this folder has no __init__.py, so a "package" fixture would live
# for the whole session and leave a second application up, which breaks the gRPC health check
# without application metadata (it finds the application only when it is the only one).
@pytest.fixture(scope="module")
def hostile_app(ray_cluster) -> Iterator[HostileApp]:
    from ray import serve

    from cluster.telemetry import TelemetryStore
    from controller.app import build_app

    spec = hostile_spec(ray_cluster)
    serve.run(build_app(spec), name=APP_NAME, route_prefix=ROUTE_PREFIX)
    try:
        yield HostileApp(spec, f"http://127.0.0.1:{ray_cluster.http_port}{ROUTE_PREFIX}", f"127.0.0.1:{ray_cluster.grpc_port}")
    finally:
        serve.delete(APP_NAME)
        asyncio.run(TelemetryStore.from_spec(spec).clear())
