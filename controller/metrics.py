"""Prometheus metrics of a Pavana ingress (`GET /metrics`), on a registry of their own.

Two kinds, because they come from two places:

- per request, counted in the ingress process as each request ends
  (`router/request_telemetry.measured` calls `RequestMetrics.observe`): requests by class,
  site, pool path and outcome, and histograms of end-to-end latency, TTFT and TBT. With
  several ingress replicas each counts its own; Prometheus scrapes them all and sums;
- cluster gauges (queues, KV occupancy, tokens/s, replicas running and desired, site power,
  SLO attainment), read from the telemetry snapshot and the plan at scrape time by a custom
  collector, so they say what Redis says now and never drift from `pavana status`.

`telemetry_families` is pure: hand-built snapshots test it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cluster.records import EngineMetrics, Plan, RequestRecord, TelemetrySnapshot
from cluster.spec import ClusterSpec
from controller.dashboard.state import class_rows, pool_rows, site_rows
from controller.engine_metrics import Families, engine_families

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds; from a fast GPU token to a slow CPU prefill of a long prompt.
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TBT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def telemetry_families(snapshot: TelemetrySnapshot, plan: Plan | None, spec: ClusterSpec, now_s: float) -> list[Metric]:
    """The cluster gauges for one snapshot and plan. A pool@site the plan does not name has no
    `desired` sample, a site without a power reading no `available` sample, a class without
    requests in the window no attainment sample: absent, not a made-up zero."""
    queued = GaugeMetricFamily("pavana_queued_requests", "Requests waiting in a pool's replicas.", labels=["pool", "site"])
    prefill = GaugeMetricFamily(
        "pavana_queued_prefill_tokens", "Prompt tokens waiting for prefill in a pool's replicas.", labels=["pool", "site"]
    )
    kv = GaugeMetricFamily("pavana_kv_occupancy_ratio", "Share of a pool's KV cache blocks in use.", labels=["pool", "site"])
    tokens = GaugeMetricFamily("pavana_tokens_per_second", "Tokens a pool computes per second.", labels=["pool", "site"])
    replicas = GaugeMetricFamily(
        "pavana_replicas", "Replicas of a pool: running (live heartbeats) and desired (the plan).", labels=["pool", "site", "state"]
    )
    for row in pool_rows(snapshot, plan, spec):
        labels = [row.pool, row.site]
        queued.add_metric(labels, row.queued_requests)
        prefill.add_metric(labels, row.queued_prefill_tokens)
        tokens.add_metric(labels, row.tokens_per_s)
        if row.kv_occupancy is not None:
            kv.add_metric(labels, row.kv_occupancy)
        replicas.add_metric([*labels, "running"], row.running)
        if row.desired is not None:
            replicas.add_metric([*labels, "desired"], row.desired)
    power = GaugeMetricFamily(
        "pavana_site_power_watts", "Power a site may draw now (available) and its replicas' estimated draw (drawn).",
        labels=["site", "kind"],
    )
    for site in site_rows(snapshot, spec):
        if site.available_w is not None:
            power.add_metric([site.site, "available"], site.available_w)
        power.add_metric([site.site, "drawn"], site.drawn_w)
    attainment = GaugeMetricFamily(
        "pavana_slo_attainment_ratio", "Share of a class's recent requests within its TTFT and TBT targets.", labels=["qos_class"]
    )
    for row in class_rows(snapshot, spec, now_s):
        if row.attainment is not None:
            attainment.add_metric([row.qos_class], row.attainment)
    return [queued, prefill, kv, tokens, replicas, power, attainment]


class _TelemetryCollector(Collector):
    """Yields the gauges of the snapshot set just before a scrape (`RequestMetrics.exposition`)."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.view: tuple[TelemetrySnapshot, Plan | None, float] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.view is not None:
            yield from telemetry_families(*self.view[:2], self.spec, self.view[2])


class _WithoutCreated(Collector):
    """A registry's families without prometheus_client's `*_created` series: the exposition
    carries exactly the metric names Pavana documents, and Prometheus needs no creation time
    to compute rates."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class RequestMetrics:
    """The ingress's metrics: counters and histograms per request, gauges at scrape time."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "pavana_requests", "Finished requests.", ["qos_class", "site", "pool_path", "outcome"], registry=self.registry
        )
        self.latency = Histogram(
            "pavana_request_latency_seconds", "End-to-end time of a request in the router.", ["qos_class"],
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        self.ttft = Histogram(
            "pavana_ttft_seconds", "Time to first token.", ["qos_class", "site"], buckets=TTFT_BUCKETS_S, registry=self.registry
        )
        self.tbt = Histogram(
            "pavana_tbt_seconds", "Time between consecutive tokens (every gap of every request).", ["qos_class", "site"],
            buckets=TBT_BUCKETS_S, registry=self.registry,
        )
        self._telemetry = _TelemetryCollector(spec)
        self.registry.register(self._telemetry)
        self._exposed = _WithoutCreated(self.registry)

    def count(self, record: RequestRecord) -> None:
        """Count a request that never ran (refused by admission): no latency to observe."""
        self.requests.labels(record.qos_class, record.site, record.pool_path, record.outcome).inc()

    def observe(self, record: RequestRecord, e2e_s: float, token_gaps_s: Iterable[float] = ()) -> None:
        """Count one finished request; called once per request as its stream ends."""
        self.count(record)
        self.latency.labels(record.qos_class).observe(e2e_s)
        if record.ttft_s is not None:
            self.ttft.labels(record.qos_class, record.site).observe(record.ttft_s)
        tbt = self.tbt.labels(record.qos_class, record.site)
        for gap in token_gaps_s:
            tbt.observe(gap)

    def exposition(
        self, snapshot: TelemetrySnapshot, plan: Plan | None, now_s: float, engines: Iterable[EngineMetrics] = ()
    ) -> bytes:
        """The text format for a scrape, with the gauges of this snapshot and plan, then the
        engines' own metrics. Setting the view and collecting run without an await between
        them, so concurrent scrapes on the ingress's event loop cannot see each other's view."""
        self._telemetry.view = (snapshot, plan, now_s)
        try:
            ours = generate_latest(self._exposed)
        finally:
            self._telemetry.view = None
        return ours + generate_latest(Families(engine_families(engines)))


__all__ = ["CONTENT_TYPE", "RequestMetrics", "telemetry_families"]
