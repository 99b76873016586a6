"""A real Ray cluster of several nodes on this one machine (`ray.cluster_utils.Cluster`: a raylet
and an object store per node), serving one Pavana application whose sites live on nodes of
their own, as they would across data centres:

    head    the Serve controller, the HTTP proxy and the ingress (resource `router`); no site
    a-main  site a, 4 CPUs, no GPU: site a's vision and decode replicas (2 CPUs each)
    a-gpu   site a, 1 CPU and one (advertised) GPU: site a's prefill replica
    b       site b alone: all of site b's pools on one node

The pools' resource asks make that placement the only one possible: a prefill replica asks for
a GPU, which only a-gpu (and b) have, and vision and decode ask for two CPUs, which a-gpu
lacks. (Nodes may advertise more CPUs than the machine has: the replicas' engines run one
thread each.) So at site a every hand-off crosses nodes (image embeddings from a-main to a-gpu, the KV
cache from a-gpu back to a-main), while site b runs the same stages on one node: the same
request at both sites must give the same output. The engine runs on the CPU whatever Ray
advertises; the GPU is only a resource that places the prefill pool.

The GCS here declares a node dead after 2 s of missed health checks rather than Ray's default
15 s, so that a killed node's loss is seen within the module's time budget.

One cluster for the module (starting it costs tens of seconds). A process joins one Ray
cluster at a time, and the suite's single-node `ray_cluster` lives for the whole session once
started; so the tests marked `multinode` are collected to run before every other test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

APP = "multinode"
PREFIX = "/multinode"
OBJECT_STORE_BYTES = 96 * 1024 * 1024
# The ingress runs on the head, so that losing a site's node never takes the front door with it.
ROUTER_RESOURCE = "router"
NODE_DEATH_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}


def pytest_collection_modifyitems(session, config, items) -> None:
    """The multinode tests first: they must start Ray themselves, before anything else has."""
    items[:] = sorted(items, key=lambda item: item.get_closest_marker("multinode") is None)


@dataclass(frozen=True)
class MultiNode:
    spec: Any
    base_url: str  # the application's OpenAI base URL, ending in /v1
    cluster: Any  # ray.cluster_utils.Cluster
    nodes: dict[str, Any]  # name -> the cluster's node (head, a-main, a-gpu, b)

    def node_id(self, name: str) -> str:
        return self.nodes[name].node_id


def multinode_spec(http_port: int):
    from cluster.spec import ClusterSpec

    one = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 1}
    return ClusterSpec.parse({
        "telemetry_prefix": f"test:{uuid.uuid4().hex}",
        "engine": {"num_threads": 1, "num_kv_blocks": 256},
        "pools": {
            "vision": {**one, "num_cpus": 2.0},
            "prefill": {**one, "num_cpus": 0.0, "num_gpus": 1.0},
            "decode": {**one, "num_cpus": 2.0},
        },
        "sites": [{"name": "a"}, {"name": "b", "latency_ms": 5.0}],
        "http_port": http_port,
        "ingress_resources": {ROUTER_RESOURCE: 0.001},  # the front door stays on the head, off the sites
    })


@pytest.fixture(scope="module")
def multinode() -> Iterator[MultiNode]:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster
    from ray.serve.config import HTTPOptions

    from cluster.telemetry import TelemetryStore
    from controller.app import build_app
    from tests.conftest import free_port

    if ray.is_initialized():
        pytest.fail("Ray already runs in this process: the multinode tests must run before any other that starts Ray")
    store = {"object_store_memory": OBJECT_STORE_BYTES}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {ROUTER_RESOURCE: 1}, "include_dashboard": False, "_system_config": NODE_DEATH_CONFIG, **store})
    nodes = {"head": cluster.head_node}
    try:
        nodes["a-main"] = cluster.add_node(num_cpus=4, resources={"site.a": 1}, **store)
        nodes["a-gpu"] = cluster.add_node(num_cpus=1, num_gpus=1, resources={"site.a": 1}, **store)
        nodes["b"] = cluster.add_node(num_cpus=4, num_gpus=1, resources={"site.b": 1}, **store)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
        port = free_port()
        spec = multinode_spec(port)
        serve.start(http_options=HTTPOptions(host="127.0.0.1", port=port), proxy_location="HeadOnly")
        serve.run(build_app(spec), name=APP, route_prefix=PREFIX)
        yield MultiNode(spec, f"http://127.0.0.1:{port}{PREFIX}/v1", cluster, nodes)
        asyncio.run(TelemetryStore.from_spec(spec).clear())
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
