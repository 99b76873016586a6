"""The autoscaler's own small configuration, and the adapter that builds it from a cluster spec.

The policy takes this rather than a `ClusterSpec` so that it depends only on the numbers it
uses: the simulator and tests build it by hand, and the spec may grow without touching it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from cluster.spec import ClusterSpec

Stage = Literal["vision", "prefill", "decode", "colocated"]
STAGES = ("vision", "prefill", "decode", "colocated")


class AutoscalerConfigError(ValueError):
    """An autoscaler setting out of range; the message names the field and the range."""


@dataclass(frozen=True, slots=True)
class ClassSLO:
    ttft_s: float
    tbt_s: float


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Bounds apply to each pool@site deployment. The SLOs are the ones the proactive terms
    aim at: the tightest of the QoS classes sharing the pool (a pool serves all classes)."""

    stage: Stage
    min_replicas: int
    max_replicas: int
    ttft_slo_s: float
    tbt_slo_s: float

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise AutoscalerConfigError(f"stage: must be one of {STAGES}, got {self.stage!r}")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise AutoscalerConfigError(
                f"min_replicas, max_replicas: need 0 <= min <= max, got {self.min_replicas}, {self.max_replicas}"
            )
        if self.ttft_slo_s <= 0 or self.tbt_slo_s <= 0:
            raise AutoscalerConfigError(f"ttft_slo_s, tbt_slo_s: must be > 0, got {self.ttft_slo_s}, {self.tbt_slo_s}")


@dataclass(frozen=True, slots=True)
class AutoscalerConfig:
    pools: dict[str, PoolConfig]
    sites: tuple[str, ...]
    class_slos: dict[str, ClassSLO] = field(default_factory=dict)
    # Hysteresis (issue 5): grow when utilisation exceeds the upper threshold, shrink only
    # below the lower one, so a pool near one threshold does not flap.
    scale_up_utilisation: float = 0.8
    scale_down_utilisation: float = 0.5
    cooldown_s: float = 60.0  # since the last change of a pool@site, before it may shrink
    reactive_cooldown_s: float = 15.0  # between reactive steps up: let the last one show in the SLO
    request_window_s: float = 30.0  # request records older than this do not count
    max_snapshot_age_s: float = 15.0  # an older snapshot counts as stale even if not marked so
    max_heartbeat_age_s: float = 30.0  # heartbeats older than this are ignored
    # Reactive term: step up when more than this share of recent requests miss their SLO, given
    # enough requests to judge and a stage busy enough to be the cause.
    slo_miss_fraction: float = 0.1
    min_requests_for_reactive: int = 10
    reactive_min_busy_fraction: float = 0.5
    # Profiled costs, used where telemetry has not measured them yet.
    encode_s_per_image: float = 0.05
    prefill_tokens_per_s: float = 2_000.0
    min_busy_for_measurement: float = 0.05  # below this, tokens/busy-second is too noisy to use
    # Under a site's cap, a running replica is worth this share of a replica of unmet need more
    # than a cold one: a replica started now serves nothing for its cold start (ModServe's GPUs
    # are scarce; trading a warm replica for a cold one must be worth it).
    warm_replica_bonus: float = 0.3
    # A replica added now serves only after its cold start, so a queue is sized to drain within
    # the TTFT SLO less the cold start, and never in more than this share of the SLO when the
    # cold start takes longer than that (a burst outgrows a pool while its new replicas load).
    cold_start_s: float = 30.0
    min_drain_share: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.scale_down_utilisation < self.scale_up_utilisation <= 1:
            raise AutoscalerConfigError(
                "scale_down_utilisation, scale_up_utilisation: need 0 < down < up <= 1, got "
                f"{self.scale_down_utilisation}, {self.scale_up_utilisation}"
            )
        for name in ("cooldown_s", "reactive_cooldown_s", "max_snapshot_age_s", "max_heartbeat_age_s"):
            if getattr(self, name) < 0:
                raise AutoscalerConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("request_window_s", "encode_s_per_image", "prefill_tokens_per_s"):
            if getattr(self, name) <= 0:
                raise AutoscalerConfigError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("slo_miss_fraction", "reactive_min_busy_fraction", "min_busy_for_measurement"):
            if not 0 <= getattr(self, name) <= 1:
                raise AutoscalerConfigError(f"{name}: must lie in [0, 1], got {getattr(self, name)}")
        if not self.sites:
            raise AutoscalerConfigError("sites: need at least one site")


def from_spec(spec: ClusterSpec, **overrides: Any) -> AutoscalerConfig:
    """Bounds from the spec's pools, sites from its sites, SLOs from its QoS classes.

    Only reads attributes, so this module does not import the spec (pydantic, YAML) at run time.
    `overrides` set the thresholds and costs the spec does not carry.
    """
    class_slos = {c.name: ClassSLO(ttft_s=c.slo.ttft_s, tbt_s=c.slo.tbt_s) for c in spec.qos_classes}
    ttft = min(s.ttft_s for s in class_slos.values())
    tbt = min(s.tbt_s for s in class_slos.values())
    pools = {
        name: PoolConfig(
            stage=p.stage, min_replicas=p.min_replicas, max_replicas=p.max_replicas, ttft_slo_s=ttft, tbt_slo_s=tbt
        )
        for name, p in spec.pools.items()
    }
    return AutoscalerConfig(pools=pools, sites=tuple(s.name for s in spec.sites), class_slos=class_slos, **overrides)
