"""The engines' own metrics (vLLM's `vllm:*`) on the ingress's `/metrics`, beside Pavana's.

Each replica publishes its engine's exposition text through its heartbeat
(`cluster.records.EngineMetrics`); a scrape reads the live replicas' texts from Redis and
serves them as one set of families, every sample labelled with the replica's `pool`, `site`
and `replica` so one Prometheus job sees every engine of the cluster. Pure: texts in,
families out. Pavana's own names (`pavana_*`) are never taken from an engine's text.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from cluster.records import EngineMetrics

log = logging.getLogger(__name__)

RESERVED_PREFIX = "pavana_"
REPLICA_LABELS = ("pool", "site", "replica")


def engine_families(records: Iterable[EngineMetrics]) -> list[Metric]:
    """One family per metric name across replicas, each sample labelled with its replica. A
    text that does not parse is skipped and logged: one replica must not blind the scrape."""
    families: dict[str, Metric] = {}
    for record in records:
        labels = {"pool": record.pool, "site": record.site, "replica": record.replica_id}
        try:
            parsed = list(text_string_to_metric_families(record.text))
        except ValueError:
            log.warning("engine metrics of %s@%s:%s do not parse; skipped", record.pool, record.site, record.replica_id)
            continue
        for family in parsed:
            if family.name.startswith(RESERVED_PREFIX):
                continue
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            merged.samples.extend(
                Sample(s.name, {**s.labels, **labels}, s.value, s.timestamp, s.exemplar) for s in family.samples
            )
    return list(families.values())


class Families(Collector):
    """A fixed list of families, for `prometheus_client.generate_latest`."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families
