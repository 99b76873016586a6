"""vLLM's own Prometheus metrics (`vllm:*`), as exposition text for the ingress's /metrics.

vLLM's `PrometheusStatLogger` (one of the default stat loggers, on while stats logging is)
registers its families with prometheus_client in the process that holds `AsyncLLM` — the
replica's — in the default registry, or in a multiprocess registry when
`PROMETHEUS_MULTIPROC_DIR` is set (as vLLM's own `get_prometheus_registry` chooses). The
replica's registry also holds other families (Ray's, Pavana's), so only `vllm:` ones go out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

VLLM_PREFIX = "vllm:"


class _VllmFamilies:
    """A registry view with only the `vllm:` families of another."""

    def __init__(self, registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if family.name.startswith(VLLM_PREFIX):
                yield family


def vllm_registry():
    """The registry vLLM's Prometheus logger writes to in this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def vllm_metrics_text(registry=None) -> str:
    """The `vllm:` families of `registry` (vLLM's, by default) in Prometheus' text format."""
    return generate_latest(_VllmFamilies(registry if registry is not None else vllm_registry())).decode()
