"""The telemetry vocabulary: what replicas, the router, sites and the controller write to Redis.

Records are frozen dataclasses so that policies (pure, DESIGN.md) take and return plain data.
On the wire each record is JSON in an envelope that names its type and schema version
(`{"schema_version": 1, "record": "heartbeat", "data": {...}}`), never a pickle: a reader of
another Pavana version must refuse a record it does not understand rather than misread it
(issue 5). Validation happens here, where the bytes enter, through pydantic.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError

# 2: heartbeats carry images_per_s and queued_images (a vision replica's measured cost and
# queue) and a language-model replica's prefill and decode rates.
# 3: request records carry the client's `user` (OpenAI's end-user id).
SCHEMA_VERSION = 3

Outcome = Literal["ok", "error", "rejected", "aborted"]
# scale_*: a pool@site changes size; reroute: a class's share of traffic at a site changes
# (before/after in percent); power_mode: a site's replicas change power mode (before/after:
# replicas in a reduced mode).
DecisionKind = Literal["scale_up", "scale_down", "hold", "reroute", "power_mode"]

# Unknown fields are an error, not ignored: a new field means a new schema version.
_STRICT_FIELDS = ConfigDict(extra="forbid")


class RecordError(ValueError):
    """A telemetry payload that cannot be read or written; the message names the field."""


class SchemaVersionError(RecordError):
    """A record written under a schema version this code does not read."""


def pool_key(pool: str, site: str) -> str:
    """The name of one deployment of a pool at a site, as plans and decisions spell it."""
    return f"{pool}@{site}"


def rank_id(pool: str, site: str, replica_id: str) -> str:
    return f"{pool_key(pool, site)}:{replica_id}"


@dataclass(frozen=True, slots=True)
class ReplicaHeartbeat:
    """One replica's load, written every few seconds with a time-to-live."""

    pool: str
    stage: str
    site: str
    replica_id: str
    queued_requests: int
    running_requests: int
    queued_prefill_tokens: int
    free_kv_blocks: int
    total_kv_blocks: int
    tokens_per_s: float
    busy_fraction: float
    power_w: float
    timestamp_s: float
    power_mode: str = ""  # the mode the replica runs in ("" before the first routing plan)
    images_per_s: float = 0.0  # vision replicas: images encoded per second over the last window
    queued_images: int = 0  # vision replicas: images waiting or being encoded
    # Language-model replicas: each rate over the step time attributed to it (0.0: not measured).
    prefill_tokens_per_busy_s: float = 0.0
    decode_tokens_per_busy_s: float = 0.0

    __pydantic_config__ = _STRICT_FIELDS

    @property
    def pool_key(self) -> str:
        return pool_key(self.pool, self.site)

    @property
    def rank_id(self) -> str:
        """The name by which the replicas of a site rank themselves for power modes
        (`cluster.power_modes.mode_for_replica`); its heartbeat's Redis key less the prefix."""
        return rank_id(self.pool, self.site, self.replica_id)

    @property
    def kv_occupancy(self) -> float:
        """Share of KV blocks in use; 0 for replicas without a KV cache (vision)."""
        if self.total_kv_blocks <= 0:
            return 0.0
        return 1.0 - self.free_kv_blocks / self.total_kv_blocks


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished request, as the router saw it.

    `num_images` is beyond the minimum of issue 5: ModServe scales the vision pool on image
    arrivals, and image counts per request vary widely, so request counts would mislead.
    TTFT and TBT are None where the request never produced a token (rejected, early errors).
    """

    request_id: str
    qos_class: str
    site: str
    pool_path: str  # stages in order, e.g. "vision>prefill>decode"
    ttft_s: float | None
    tbt_p50_s: float | None
    tbt_p99_s: float | None
    prompt_tokens: int
    output_tokens: int
    outcome: Outcome
    timestamp_s: float
    num_images: int = 0
    # The `user` a client sent (OpenAI's end-user id, for tracing abuse to an end user); None without one.
    user: str | None = None

    __pydantic_config__ = _STRICT_FIELDS

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(self.pool_path.split(">")) if self.pool_path else ()


# An engine's exported metrics above this size are refused: a scrape must stay cheap.
MAX_ENGINE_METRICS_CHARS = 512 * 1024


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """An engine's own Prometheus metrics (vLLM's `vllm:*`), in the text format, as one replica
    exported them; the ingress's `/metrics` serves them beside Pavana's, labelled by replica."""

    pool: str
    site: str
    replica_id: str
    text: str
    timestamp_s: float

    __pydantic_config__ = _STRICT_FIELDS

    def __post_init__(self) -> None:
        if len(self.text) > MAX_ENGINE_METRICS_CHARS:
            raise RecordError(f"engine_metrics.text: {len(self.text)} characters, the limit is {MAX_ENGINE_METRICS_CHARS}")


@dataclass(frozen=True, slots=True)
class SitePower:
    """Power a site can draw now (Heron): from a meter, a trace replayer or a constant."""

    site: str
    available_w: float
    timestamp_s: float
    source: str

    __pydantic_config__ = _STRICT_FIELDS


@dataclass(frozen=True, slots=True)
class Decision:
    """One action of the controller with its reason, so status can say why (KubeRay events)."""

    kind: DecisionKind
    target: str  # pool@site
    before: int
    after: int
    reason: str
    timestamp_s: float

    __pydantic_config__ = _STRICT_FIELDS


@dataclass(frozen=True, slots=True)
class PoolTarget:
    """The desired size of one pool at one site, and why."""

    pool: str
    site: str
    current: int
    desired: int
    reason: str

    __pydantic_config__ = _STRICT_FIELDS

    @property
    def key(self) -> str:
        return pool_key(self.pool, self.site)


@dataclass(frozen=True, slots=True)
class Plan:
    """Desired replicas for every pool@site at one instant; acting on it twice changes nothing."""

    targets: tuple[PoolTarget, ...]
    timestamp_s: float

    __pydantic_config__ = _STRICT_FIELDS

    @property
    def desired(self) -> dict[str, int]:
        return {t.key: t.desired for t in self.targets}

    def target(self, key: str) -> PoolTarget:
        for t in self.targets:
            if t.key == key:
                return t
        raise KeyError(f"plan has no target {key!r} (targets: {[t.key for t in self.targets]})")

    def changes(self) -> tuple[Decision, ...]:
        """The decisions this plan implies: one per target whose size changes."""
        return tuple(
            Decision(
                kind="scale_up" if t.desired > t.current else "scale_down",
                target=t.key,
                before=t.current,
                after=t.desired,
                reason=t.reason,
                timestamp_s=self.timestamp_s,
            )
            for t in self.targets
            if t.desired != t.current
        )


@dataclass(frozen=True, slots=True)
class RoutingPlan:
    """The power planner's slow-timescale answer (Heron): what share of each class's traffic
    each site takes, how many of a site's replicas run in each power mode, and the power the
    plan assumed per site (the site router and the controller replan when power falls below
    it)."""

    shares: dict[str, dict[str, float]]  # class -> site -> share (sums to 1 over sites, or all 0)
    modes: dict[str, dict[str, int]]  # site -> mode -> replicas
    planned_power_w: dict[str, float]  # site -> the (forecast) power the plan assumed
    reasons: dict[str, str]  # site -> why
    goodput_rps: float
    timestamp_s: float

    __pydantic_config__ = _STRICT_FIELDS


@dataclass(frozen=True, slots=True)
class TelemetrySnapshot:
    """Everything a policy sees of the cluster at once.

    `stale` is True when the store could not reach Redis and serves its last good read;
    `age_s` is how old that read is (math.inf when there never was one). Policies take no
    action on stale data (issue 5). A snapshot is a read model, not a wire record.
    """

    heartbeats: tuple[ReplicaHeartbeat, ...] = ()
    requests: tuple[RequestRecord, ...] = ()
    site_power: dict[str, SitePower] = field(default_factory=dict)
    taken_at_s: float = 0.0
    stale: bool = False
    age_s: float = 0.0

    def heartbeats_of(self, pool: str, site: str) -> tuple[ReplicaHeartbeat, ...]:
        return tuple(h for h in self.heartbeats if h.pool == pool and h.site == site)


WireRecord = ReplicaHeartbeat | RequestRecord | SitePower | Decision | Plan | RoutingPlan | EngineMetrics
R = TypeVar("R", ReplicaHeartbeat, RequestRecord, SitePower, Decision, Plan, RoutingPlan, EngineMetrics)

RECORD_TYPES: dict[str, type] = {
    "heartbeat": ReplicaHeartbeat,
    "request": RequestRecord,
    "site_power": SitePower,
    "decision": Decision,
    "plan": Plan,
    "routing": RoutingPlan,
    "engine_metrics": EngineMetrics,
}
_NAMES = {cls: name for name, cls in RECORD_TYPES.items()}


@cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def to_json(record: WireRecord) -> str:
    """Serialise a record in its versioned envelope; non-finite numbers are refused here."""
    name = _NAMES.get(type(record))
    if name is None:
        raise RecordError(f"{type(record).__name__} is not a telemetry record (known: {sorted(RECORD_TYPES)})")
    data = _adapter(type(record)).dump_python(record, mode="json")
    for key, value in data.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise RecordError(f"{name}.{key}: must be a finite number, got {value!r}")
    envelope = {"schema_version": SCHEMA_VERSION, "record": name, "data": data}
    try:
        return json.dumps(envelope, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:  # a non-finite number nested deeper (a plan's targets)
        raise RecordError(f"{name}: {exc}") from None


def from_json(payload: str | bytes, expected: type[R] | None = None) -> R | Any:
    """Read a record; refuse unknown schema versions, unknown record types and bad fields."""
    try:
        envelope = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"telemetry payload is not JSON: {exc}") from None
    if not isinstance(envelope, dict) or not {"schema_version", "record", "data"} <= envelope.keys():
        raise RecordError("telemetry payload must be an object with schema_version, record and data")
    name, version = envelope["record"], envelope["schema_version"]
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{name} record has schema_version {version!r}; this Pavana reads only version {SCHEMA_VERSION}"
        )
    cls = RECORD_TYPES.get(name)
    if cls is None:
        raise RecordError(f"record: unknown type {name!r} (known: {sorted(RECORD_TYPES)})")
    if expected is not None and cls is not expected:
        raise RecordError(f"record: expected {_NAMES[expected]!r}, got {name!r}")
    try:
        return _adapter(cls).validate_python(envelope["data"])
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or name}: {e['msg']}" for e in exc.errors())
        raise RecordError(f"{name} record: {problems}") from None
