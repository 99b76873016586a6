"""The pools' request routers inside real Ray Serve: requests land where the policy says.

Two small deployments of two replicas each (one with `PrefillRequestRouter`, one with
`DecodeRequestRouter`) report routing stats that the test sets through a board actor, and
answer each call with their own replica id.

Stats reach the router a routing-stats period later (the controller polls the replicas, then
broadcasts), so each check waits until a run of requests lands on the expected replica. Every
expectation below names the replica that the tie-break (smaller id) would *not* pick, or
follows a flip, so a router that ignored the stats could not pass.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import ray.cloudpickle
from ray import serve
from ray.serve.config import RequestRouterConfig

from workers.engine.sampling import SamplingParams
from workers.requests import GenerateRequest

pytestmark = pytest.mark.ray

# Replicas unpickle the classes below by value, so this module need not be importable there.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

APP = "replica-router-test"
BLOCK = 16


@ray.remote(num_cpus=0)
class StatsBoard:
    """Routing stats per replica id, set by the test, read by the replicas."""

    def __init__(self) -> None:
        self.stats: dict[str, dict[str, Any]] = {}
        self.replicas: dict[str, list[str]] = {}

    def register(self, role: str, replica_id: str) -> None:
        self.replicas.setdefault(role, []).append(replica_id)

    def replica_ids(self, role: str) -> list[str]:
        return sorted(self.replicas.get(role, []))

    def set(self, replica_id: str, stats: dict[str, Any]) -> None:
        self.stats[replica_id] = stats

    def get(self, replica_id: str) -> dict[str, Any]:
        return self.stats.get(replica_id, {})


class Probe:
    """Stands in for a pool replica: its stats come from the board; it answers its id."""

    def __init__(self, board, role: str) -> None:
        self.board = board
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        ray.get(board.register.remote(role, self.replica_id))

    async def record_routing_stats(self) -> dict[str, Any]:
        return await self.board.get.remote(self.replica_id)

    async def prefill(self, request: GenerateRequest) -> str:
        return self.replica_id

    async def decode(self, request: GenerateRequest, prefilled: Any) -> str:
        return self.replica_id

    async def stats(self) -> str:
        return self.replica_id


def stats(queued: int = 0, hashes=(), free: int = 100, running: int = 0) -> dict[str, Any]:
    return {
        "pool": "test", "site": "local", "running": running, "waiting": 0,
        "queued_prefill_tokens": queued, "free_kv_blocks": free, "total_kv_blocks": 200,
        "tokens_per_s": 0.0, "busy_fraction": 0.0, "prefix_hashes": sorted(hashes),
    }


def request(hashes=(), num_tokens: int = 8 * BLOCK + 3, max_tokens: int = 16) -> GenerateRequest:
    return GenerateRequest(
        request_id="r",
        prompt_token_ids=list(range(num_tokens)),
        params=SamplingParams(max_tokens=max_tokens),
        prefix_hashes=tuple(hashes),
    )


def eventually_routed_to(call, expected: str, *, in_a_row: int = 5, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    streak, seen = 0, []
    while streak < in_a_row:
        got = call()
        seen.append(got)
        streak = streak + 1 if got == expected else 0
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {expected}, last answers {seen[-10:]}")
        if streak == 0:
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(ray_cluster) -> Iterator[dict[str, Any]]:
    board = StatsBoard.remote()

    def pool(role: str, router: str):
        return serve.deployment(Probe).options(
            name=f"probe-{role}",
            num_replicas=2,
            ray_actor_options={"num_cpus": 0},
            request_router_config=RequestRouterConfig(
                request_router_class=f"router.replica_router:{router}",
                request_router_kwargs={"block_size": BLOCK, "imbalance_tokens": 1000},
                request_routing_stats_period_s=0.1,
            ),
        ).bind(board, role)

    try:
        serve.run(pool("prefill", "PrefillRequestRouter"), name=f"{APP}-prefill", route_prefix=None)
        serve.run(pool("decode", "DecodeRequestRouter"), name=f"{APP}-decode", route_prefix=None)
        yield {
            "board": board,
            "prefill": serve.get_deployment_handle("probe-prefill", app_name=f"{APP}-prefill"),
            "decode": serve.get_deployment_handle("probe-decode", app_name=f"{APP}-decode"),
            "prefill_ids": ray.get(board.replica_ids.remote("prefill")),
            "decode_ids": ray.get(board.replica_ids.remote("decode")),
        }
    finally:
        serve.delete(f"{APP}-prefill")
        serve.delete(f"{APP}-decode")
        ray.kill(board)


def test_prefill_goes_to_fewer_queued_tokens(cluster):
    board, handle = cluster["board"], cluster["prefill"]
    low, high = cluster["prefill_ids"]
    call = lambda: handle.prefill.remote(request()).result()  # noqa: E731

    ray.get([board.set.remote(low, stats(queued=900)), board.set.remote(high, stats(queued=100))])
    eventually_routed_to(call, high)
    ray.get([board.set.remote(low, stats(queued=100)), board.set.remote(high, stats(queued=900))])
    eventually_routed_to(call, low)


def test_shared_prefix_sticks_to_the_replica_that_holds_it(cluster):
    board, handle = cluster["board"], cluster["prefill"]
    low, high = cluster["prefill_ids"]
    prompt = [7001 + i for i in range(8)]
    other = [9001 + i for i in range(8)]
    # "high" holds the prompt's 8 blocks and its queue is 60 tokens longer: affinity (128
    # tokens it need not recompute) wins, for this prompt and for longer ones that share its
    # blocks; a prompt it does not hold goes to the shorter queue.
    ray.get([board.set.remote(low, stats(queued=40)), board.set.remote(high, stats(queued=100, hashes=prompt))])
    eventually_routed_to(lambda: handle.prefill.remote(request(prompt)).result(), high)
    longer = request([*prompt, 8001, 8002], num_tokens=10 * BLOCK + 3)
    assert {handle.prefill.remote(r).result() for r in (request(prompt), longer, request(prompt[:6]))} == {high}
    assert handle.prefill.remote(request(other)).result() == low


def test_calls_without_a_request_are_still_routed(cluster):
    ids = {cluster["prefill"].stats.remote().result() for _ in range(4)}
    assert ids <= set(cluster["prefill_ids"])


def test_decode_goes_to_most_free_kv_blocks(cluster):
    board, handle = cluster["board"], cluster["decode"]
    low, high = cluster["decode_ids"]
    call = lambda: handle.decode.remote(request(max_tokens=32), None).result()  # noqa: E731

    ray.get([board.set.remote(low, stats(free=20)), board.set.remote(high, stats(free=150))])
    eventually_routed_to(call, high)
    ray.get([board.set.remote(low, stats(free=150)), board.set.remote(high, stats(free=20))])
    eventually_routed_to(call, low)
