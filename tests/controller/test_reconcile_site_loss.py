"""The reconcile loop records a lost site with its reason in Redis, once, and its return: the
node picture is handed in as `site_nodes` would read it from Ray, the rest is the real loop
writing to the real Redis (a fresh key prefix)."""

from __future__ import annotations

import time
import uuid

import pytest

from cluster.records import TelemetrySnapshot
from cluster.spec import ClusterSpec
from controller.reconcile import Reconciler, site_nodes
from router.site_view import SiteNodes

pytestmark = [pytest.mark.redis]


@pytest.fixture
async def reconciler():
    spec = ClusterSpec.parse({"telemetry_prefix": f"test:{uuid.uuid4().hex}", "sites": [{"name": "a"}, {"name": "b"}],
                              "pools": {"prefill": {}, "decode": {}}})
    reconciler = Reconciler(spec)
    try:
        yield reconciler
    finally:
        await reconciler.store.clear()
        await reconciler.store.close()


async def a_round(reconciler: Reconciler, **nodes: SiteNodes) -> list:
    now = time.time()
    observation = reconciler.observation(TelemetrySnapshot(taken_at_s=now), {"prefill@b": 1, "decode@b": 1}, now)
    await reconciler.round(observation, nodes)
    return [d for d in await reconciler.store.recent_decisions(100) if d.reason.startswith("site b")]


async def test_a_lost_site_is_recorded_with_its_reason_once_and_its_return_too(reconciler):
    up, gone = SiteNodes(live=1, gone=0), SiteNodes(live=0, gone=1)
    assert await a_round(reconciler, a=up, b=up) == []
    lost = await a_round(reconciler, a=up, b=gone)
    assert sorted(d.target for d in lost) == ["decode@b", "prefill@b"]
    assert all(d.kind == "hold" and "site b lost: no live node carries site.b" in d.reason for d in lost)
    assert reconciler.lost_sites.keys() == {"b"}
    assert len(await a_round(reconciler, a=up, b=gone)) == 2  # recorded once, not every round
    back = await a_round(reconciler, a=up, b=SiteNodes(live=1, gone=1))
    assert sorted(d.reason.split(":")[0] for d in back) == ["site b back", "site b back", "site b lost", "site b lost"]
    assert reconciler.lost_sites == {}


def ray_node(node_id: str, alive: bool, **resources: float) -> dict:
    """A node as `ray.nodes()` lists it: one that left keeps its id and loses its resources."""
    return {"NodeID": node_id, "Alive": alive, "Resources": resources if alive else {}}


def test_a_node_that_left_still_counts_for_the_site_it_carried():
    seen: dict[str, set[str]] = {}
    up = [ray_node("n1", True, **{"site.a": 1.0}), ray_node("n2", True, **{"site.b": 1.0}), ray_node("head", True, CPU=1.0)]
    assert site_nodes(["a", "b"], up, seen) == {"a": SiteNodes(1, 0), "b": SiteNodes(1, 0)}
    down = [up[0], ray_node("n2", False), up[2]]
    assert site_nodes(["a", "b"], down, seen) == {"a": SiteNodes(1, 0), "b": SiteNodes(0, 1)}
    assert site_nodes(["a", "b"], [up[0], up[2]], seen)["b"] == SiteNodes(0, 1)  # gone from the list altogether
