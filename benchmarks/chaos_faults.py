"""The faults of `pavana bench chaos`, and what they are over (the conditions that say the
cluster is whole again are checked all together by `benchmarks/chaos_run.cluster_whole`).

- A pool replica killed: `ray.kill` of one replica actor of the pool (Serve names them
  `SERVE_REPLICA::<app>#<deployment>#<replica id>` in the `serve` namespace), as a crash
  would, without a graceful shutdown. Among the pool's replicas the one with the most requests
  running or waiting is chosen, so a kill lands under streams where there are any. Serve starts
  a replacement; whole again when the deployment runs its size and the dead replica is gone.
- The reconcile actor killed: its process dies (`ray.kill` with restart allowed, as an
  out-of-memory kill); Ray restarts the actor (`max_restarts=-1`), whose loop starts from its
  constructor and takes up the plan from Redis. Whole again when the actor answers and a round
  has written a plan after the kill.
- Redis restarted: the private `redis-server` this run started on a free port (never the
  shared one on 6379) is stopped and started again on the same port, keeping nothing, as
  Pavana's private server runs. Whole again when it answers and every live replica's heartbeat
  is back in it.

Every wait is on a condition with a bound (`until`); a bound passed raises `NotWhole` naming
what was missing, and the run records it rather than striking the next fault into a broken
cluster.
"""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

POLL_S = 0.25


class NotWhole(RuntimeError):
    """The cluster did not become whole again within the bound after a fault."""


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> float:
    """Poll `condition` until it holds; returns the seconds it took, or raises `NotWhole`."""
    started = time.monotonic()
    while True:
        try:
            if await condition():
                return time.monotonic() - started
        except Exception:  # a restarting actor or server answers with errors meanwhile
            pass
        if time.monotonic() - started > timeout_s:
            raise NotWhole(f"{what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(POLL_S)


def in_thread(call: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    """Ray's blocking calls, off the event loop that carries the traffic."""
    return asyncio.get_running_loop().run_in_executor(None, call, *args)


# Replicas of a pool ----------------------------------------------------------------------------

def replica_ids(app: str, deployment: str) -> list[str]:
    """Live replica ids of one deployment, from Serve's named actors."""
    import ray

    head = f"SERVE_REPLICA::{app}#{deployment}#"
    return [a["name"].removeprefix(head) for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(head)]


def replica_actor(app: str, deployment: str, replica_id: str) -> Any:
    import ray

    return ray.get_actor(f"SERVE_REPLICA::{app}#{deployment}#{replica_id}", namespace="serve")


def replica_stats(app: str, deployment: str, replica_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The replica's routing stats (`workers/deployments.py`), asked of its actor directly."""
    import ray

    return ray.get(replica_actor(app, deployment, replica_id).record_routing_stats.remote(), timeout=timeout_s)


def running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    found = status.deployments.get(deployment) if status else None
    return int(found.replica_states.get("RUNNING", 0)) if found else 0


def busiest_replica(app: str, deployment: str, rng: random.Random) -> tuple[str, int]:
    """The replica with the most requests running or waiting (ties broken by `rng`), and that
    number."""
    loads = []
    for replica_id in sorted(replica_ids(app, deployment)):
        try:
            stats = replica_stats(app, deployment, replica_id)
        except Exception:
            continue
        load = int(stats.get("running", 0)) + int(stats.get("waiting", 0)) + int(stats.get("queued_images", 0))
        loads.append((load, rng.random(), replica_id))
    if not loads:
        raise NotWhole(f"{deployment}: no live replica to kill")
    load, _, replica_id = max(loads)
    return replica_id, load


def kill_replica(app: str, deployment: str, replica_id: str) -> None:
    import ray

    ray.kill(replica_actor(app, deployment, replica_id), no_restart=True)


# The reconcile actor ---------------------------------------------------------------------------

def kill_reconciler() -> None:
    import ray

    from controller.reconcile import NAMESPACE, RECONCILER_NAME

    ray.kill(ray.get_actor(RECONCILER_NAME, namespace=NAMESPACE), no_restart=False)


def reconciler_answers() -> bool:
    import ray

    from controller.reconcile import NAMESPACE, RECONCILER_NAME

    return bool(ray.get(ray.get_actor(RECONCILER_NAME, namespace=NAMESPACE).alive.remote(), timeout=5))


# Redis ----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PrivateRedis:
    """A `redis-server` of this run's own on a free loopback port, keeping nothing on disk;
    started, stopped and restarted by its process, which only this run holds."""

    port: int
    binary: str
    process: subprocess.Popen | None = None

    @classmethod
    def start_new(cls) -> PrivateRedis:
        from controller.redis_server import INSTALL_HINT, find_redis_server

        found = find_redis_server()
        if found is None:
            raise RuntimeError(INSTALL_HINT)
        server = cls(free_port(), found.path)
        server.start()
        return server

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def answers(self) -> bool:
        from controller.redis_server import answers

        return answers(self.port)

    def start(self, timeout_s: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


# KV blocks after the traffic --------------------------------------------------------------------

def kv_blocks_in_use(app: str, deployments: list[str]) -> dict[str, dict[str, int]]:
    """For every live LLM replica: its KV blocks in all and those not free."""
    found = {}
    for deployment in deployments:
        for replica_id in replica_ids(app, deployment):
            stats = replica_stats(app, deployment, replica_id)
            total = int(stats.get("total_kv_blocks", 0))
            found[f"{deployment}#{replica_id}"] = {"total": total, "in_use": total - int(stats.get("free_kv_blocks", 0))}
    return found


async def kv_blocks_after_drain(app: str, deployments: list[str], timeout_s: float) -> dict[str, dict[str, int]]:
    """Wait (bounded) until every live replica's KV blocks are free; the last reading either way."""
    started = time.monotonic()
    while True:
        blocks = await in_thread(kv_blocks_in_use, app, deployments)
        if not any(b["in_use"] for b in blocks.values()) or time.monotonic() - started > timeout_s:
            return blocks
        await asyncio.sleep(0.5)
