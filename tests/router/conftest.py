"""One real Ray cluster for the router's integration tests, started once per session.

It serves the default spec (tiny bundled model, disaggregated topology) on free ports with an
API key, through the same `start_serving` that `pavana up` calls. A second application with
the colocated topology is deployed beside it on demand (`colocated_app`) and removed after its
tests, so that the gRPC health check, which names no application, finds a single one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

API_KEY = "test-key"
COLOCATED_APP = "pavana-colocated"
COLOCATED_PREFIX = "/colocated"


@dataclass(frozen=True)
class Served:
    spec: object
    http_url: str  # the OpenAI base URL, ending in /v1
    grpc_address: str
    api_key: str

    @property
    def model(self) -> str:
        return self.spec.model.name


def router_test_spec(default, ports):
    """The default spec on free ports, with an API key and one engine thread per replica (two
    cores here). Without a vision tower in the checkpoint the vision pool has nothing to do,
    and it is left out."""
    from workers.engine.default_model import ensure_default_model
    from workers.vision.encoder import has_vision_tower

    raw = default.model_dump(mode="json")
    if not has_vision_tower(raw["model"]["path"] or ensure_default_model()):
        raw["pools"].pop("vision", None)
    raw["engine"]["num_threads"] = 1
    raw.update(http_port=ports.http_port, grpc_port=ports.grpc_port, api_keys=[API_KEY], telemetry_prefix=f"test:{uuid.uuid4().hex}")
    return type(default).model_validate(raw)


@pytest.fixture(scope="session")
def served(ray_cluster) -> Iterator[Served]:
    from ray import serve

    from cluster.spec import ClusterSpec
    from controller.serving import start_serving

    spec = router_test_spec(ClusterSpec.default(), ray_cluster)
    start_serving(spec)
    try:
        yield Served(spec, f"http://127.0.0.1:{spec.http_port}/v1", f"127.0.0.1:{spec.grpc_port}", API_KEY)
    finally:
        serve.delete("pavana")


@pytest.fixture(scope="module")
def colocated_app(served: Served) -> Iterator[str]:
    """The same model with the colocated topology, as a second application; yields its base URL."""
    from ray import serve

    from controller.app import build_app

    spec = colocated_spec(served.spec)
    serve.run(build_app(spec), name=COLOCATED_APP, route_prefix=COLOCATED_PREFIX)
    try:
        yield f"http://127.0.0.1:{served.spec.http_port}{COLOCATED_PREFIX}/v1"
    finally:
        serve.delete(COLOCATED_APP)


def colocated_spec(spec):
    from cluster.spec import ClusterSpec

    raw = spec.model_dump(mode="json")
    pools = raw["pools"]
    raw["topology"] = "colocated"
    raw["pools"] = {"colocated": {**pools["prefill"], "stage": "colocated"}}
    if "vision" in pools:
        raw["pools"]["vision"] = pools["vision"]
    return ClusterSpec.model_validate(raw)


@pytest.fixture(scope="session")
def direct_engine(served: Served):
    """The engine itself, in this process, with the spec's engine settings."""
    from controller.app import engine_settings
    from workers.engine.config import EngineConfig
    from workers.engine.default_model import ensure_default_model
    from workers.engine.llm_engine import LLMEngine

    return LLMEngine(ensure_default_model(), EngineConfig(**engine_settings(served.spec)))
