"""Fixtures shared across the suite: tiny random checkpoints built by `transformers` itself."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import cluster.spec  # noqa: E402
from tiny_checkpoints import build_tiny_llama, build_tiny_llava  # noqa: E402

# Specs that name no model serve the tiny random LLaVA here, not SmolLM2: every Serve replica
# of every test would otherwise load 135M parameters. Set at import, before any test module
# builds a spec; tests of the real default ask for `real_default_model`, and
# tests/workers/engine/test_smollm2.py loads SmolLM2 explicitly.
REAL_DEFAULT_MODEL = cluster.spec.DEFAULT_BUNDLED_MODEL
cluster.spec.DEFAULT_BUNDLED_MODEL = "pavana-tiny"


@pytest.fixture
def real_default_model(monkeypatch) -> str:
    """Specs that name no model get the real default, as `pavana up` does."""
    monkeypatch.setattr(cluster.spec, "DEFAULT_BUNDLED_MODEL", REAL_DEFAULT_MODEL)
    return REAL_DEFAULT_MODEL


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ServeInstance:
    http_port: int
    grpc_port: int


def test_ingress() -> str:
    """The ingress the test cluster serves through: `pavana up`'s default, unless
    PAVANA_TEST_INGRESS names another (`controller/ingress_mode.py`)."""
    from controller.ingress_mode import DEFAULT, choose

    return choose(os.environ.get("PAVANA_TEST_INGRESS", DEFAULT))[0]


test_ingress.__test__ = False  # a helper, not a test


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster with Ray Serve's proxies, shared by every test that needs
    Ray (starting one costs seconds). Each test module deploys its own applications and
    deletes them when done. The single node carries the resources of the sites `local`, `a`, `b`."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    from controller.grpc_host import runtime_env
    from controller.serving import GRPC_SERVICER_FUNCTIONS

    from controller.ingress_mode import apply

    apply(test_ingress())
    instance = ServeInstance(free_port(), free_port())
    sites = {f"site.{name}": 100 for name in ("local", "a", "b")}
    # gRPC on the loopback interface, as `pavana up` serves it.
    # address="local": always a cluster of its own, never one another process left running.
    ray.init(address="local", num_cpus=8, resources=sites, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env("127.0.0.1"))
    serve.start(
        http_options=HTTPOptions(host="127.0.0.1", port=instance.http_port),
        grpc_options=gRPCOptions(port=instance.grpc_port, grpc_servicer_functions=list(GRPC_SERVICER_FUNCTIONS)),
    )
    try:
        yield instance
    finally:
        serve.shutdown()
        ray.shutdown()


@contextmanager
def deployed_app(spec, name: str, prefix: str, ports: ServeInstance, *, blocking: bool = True) -> Iterator[str]:
    """Deploy `spec` as application `name` at `prefix` on the session's cluster; yields its
    OpenAI base URL; afterwards deletes it and its telemetry. `blocking=False` returns before
    every replica is up (an application that is meant never to be whole)."""
    import asyncio

    from ray import serve
    from ray.serve.api import _run

    from cluster.telemetry import TelemetryStore
    from controller.app import build_app

    _run(build_app(spec), name=name, route_prefix=prefix, _blocking=blocking)
    try:
        yield f"http://127.0.0.1:{ports.http_port}{prefix}/v1"
    finally:
        serve.delete(name)
        asyncio.run(TelemetryStore.from_spec(spec).clear())
