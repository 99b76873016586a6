"""The adapter into Ray Serve's custom autoscaling-policy hook: each pool deployment follows
the replica count that Pavana's plan (computed by the reconcile loop, kept in Redis) gives
its pool@site.

Ray Serve's controller calls the policy every control-loop tick, so this reads the plan at
most once per `refresh_s` with short timeouts, and without a fresh plan (Redis away, no plan
yet, a plan older than `max_plan_age_s`) it keeps the deployment where it is. Following the
same plan twice changes nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from cluster.records import Plan, RecordError, from_json, pool_key

log = logging.getLogger(__name__)


class FollowPlan:
    """Instantiated once per deployment by Serve with `policy_kwargs`; then called per tick."""

    def __init__(self, redis_url: str, prefix: str, pool: str, site: str, refresh_s: float = 1.0, max_plan_age_s: float = 60.0) -> None:
        self.key = (prefix if prefix.endswith(":") else prefix + ":") + "plan"
        self.target = pool_key(pool, site)
        self.refresh_s = refresh_s
        self.max_plan_age_s = max_plan_age_s
        self._client = redis.Redis.from_url(redis_url, socket_timeout=0.2, socket_connect_timeout=0.2, decode_responses=True)
        self._plan: Plan | None = None
        self._read_at = -float("inf")

    def _fresh_plan(self, now: float) -> Plan | None:
        if now - self._read_at >= self.refresh_s:
            self._read_at = now
            try:
                payload = self._client.get(self.key)
                self._plan = None if payload is None else from_json(payload, Plan)
            except (redis.RedisError, OSError, RecordError) as exc:
                log.warning("autoscaling hook: cannot read the plan (%s); keeping %s as it is", exc, self.target)
                self._plan = None
        if self._plan is None or now - self._plan.timestamp_s > self.max_plan_age_s:
            return None
        return self._plan

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        plan = self._fresh_plan(time.time())
        desired = plan.desired.get(self.target) if plan is not None else None
        if desired is None:
            return ctx.target_num_replicas, {}
        low, high = ctx.capacity_adjusted_min_replicas, ctx.capacity_adjusted_max_replicas
        return max(low, min(high, desired)), {}
