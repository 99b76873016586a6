"""The Ray Serve autoscaling hook follows the plan in Redis, and holds still without one."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import pytest

from autoscaler.serve_hook import FollowPlan
from cluster.records import Plan, PoolTarget
from cluster.telemetry import TelemetryStore

pytestmark = pytest.mark.redis
REDIS = "redis://127.0.0.1:6379"


@dataclass
class Context:
    """The fields of Ray Serve's AutoscalingContext that the hook reads."""

    target_num_replicas: int = 2
    capacity_adjusted_min_replicas: int = 1
    capacity_adjusted_max_replicas: int = 4


@pytest.fixture
def prefix():
    prefix = f"test:{uuid.uuid4().hex}"
    yield prefix
    asyncio.run(TelemetryStore(REDIS, prefix).clear())


def write_plan(prefix: str, desired: int, age_s: float = 0.0) -> None:
    plan = Plan(targets=(PoolTarget(pool="prefill", site="a", current=2, desired=desired, reason="test"),), timestamp_s=time.time() - age_s)
    asyncio.run(TelemetryStore(REDIS, prefix).set_plan(plan))


def test_follows_the_plan_within_the_bounds(prefix):
    hook = FollowPlan(REDIS, prefix, "prefill", "a", refresh_s=0)
    write_plan(prefix, 3)
    assert hook(Context()) == (3, {})
    write_plan(prefix, 9)
    assert hook(Context())[0] == 4  # capped by Serve's max
    write_plan(prefix, 0)
    assert hook(Context())[0] == 1


def test_holds_without_a_fresh_plan(prefix):
    hook = FollowPlan(REDIS, prefix, "prefill", "a", refresh_s=0, max_plan_age_s=30)
    assert hook(Context(target_num_replicas=2))[0] == 2  # no plan yet
    write_plan(prefix, 3, age_s=120)
    assert hook(Context(target_num_replicas=2))[0] == 2  # stale
    other = FollowPlan(REDIS, prefix, "decode", "a", refresh_s=0)
    write_plan(prefix, 3)
    assert other(Context(target_num_replicas=2))[0] == 2  # the plan says nothing of this pool


def test_holds_when_redis_is_unreachable():
    hook = FollowPlan("redis://127.0.0.1:1", "nowhere", "prefill", "a", refresh_s=0)
    started = time.monotonic()
    assert hook(Context(target_num_replicas=3))[0] == 3
    assert time.monotonic() - started < 1.0  # never stalls Serve's control loop for long
