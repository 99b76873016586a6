"""Which metrics and labels a PromQL expression names, checked against Pavana's metrics.

Pavana's ingress exports a fixed set of Prometheus metrics at `/metrics`; a dashboard query
that names anything else (a typo, a renamed metric, a label a metric does not carry) draws
an empty panel rather than an error. This reads the names out of an expression — functions
and keywords apart from metrics, label matchers and `by (...)` lists apart from both — and
says what is not Pavana's.
"""

from __future__ import annotations

import re

# name -> (type, labels)
METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "pavana_requests_total": ("counter", frozenset({"qos_class", "site", "pool_path", "outcome"})),
    "pavana_request_latency_seconds": ("histogram", frozenset({"qos_class"})),
    "pavana_ttft_seconds": ("histogram", frozenset({"qos_class", "site"})),
    "pavana_tbt_seconds": ("histogram", frozenset({"qos_class", "site"})),
    "pavana_queued_requests": ("gauge", frozenset({"pool", "site"})),
    "pavana_queued_prefill_tokens": ("gauge", frozenset({"pool", "site"})),
    "pavana_kv_occupancy_ratio": ("gauge", frozenset({"pool", "site"})),
    "pavana_tokens_per_second": ("gauge", frozenset({"pool", "site"})),
    "pavana_replicas": ("gauge", frozenset({"pool", "site", "state"})),
    "pavana_site_power_watts": ("gauge", frozenset({"site", "kind"})),
    "pavana_slo_attainment_ratio": ("gauge", frozenset({"qos_class"})),
}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")

FUNCTIONS = frozenset({
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "clamp", "clamp_min", "clamp_max",
    "abs", "ceil", "floor", "round", "sqrt", "exp", "ln", "log2", "log10", "avg_over_time", "min_over_time",
    "max_over_time", "sum_over_time", "count_over_time", "last_over_time", "quantile_over_time", "absent",
    "label_replace", "label_join", "sort", "sort_desc", "time", "vector", "scalar", "timestamp", "changes", "resets",
})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
# numbers, and durations such as the `5m` of `offset 5m`
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?:ms|[smhdwy])?(?![A-Za-z0-9_:])")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_family(series: str) -> str | None:
    """The family a series name belongs to (`pavana_ttft_seconds_bucket` -> `pavana_ttft_seconds`),
    or None when it is none of Pavana's."""
    if series in METRICS and METRICS[series][0] != "histogram":
        return series
    for suffix in HISTOGRAM_SERIES:
        base = series.removesuffix(suffix)
        if base != series and METRICS.get(base, ("",))[0] == "histogram":
            return base
    return None


def _labels_of(series: str) -> frozenset[str]:
    family = metric_family(series)
    labels = METRICS[family][1] if family else frozenset()
    return labels | {"le"} if series.endswith("_bucket") else labels


def names(expr: str) -> tuple[set[str], set[str], list[tuple[str, set[str]]]]:
    """(metric names, function names, [(metric or '', label names matched on it)])."""
    text = _STRING.sub('""', expr)
    selectors = [(m.group(1) or "", {k for k, _ in _MATCHER.findall(m.group(2))}) for m in _SELECTOR.finditer(text)]
    text = _SELECTOR.sub(lambda m: m.group(1) or "", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    metrics, functions = set(), set()
    for m in _IDENT.finditer(text):
        word = m.group(0)
        if text[m.end():].lstrip().startswith("("):
            functions.add(word)
        elif word not in KEYWORDS:
            metrics.add(word)
    return metrics, functions, selectors


def grouping_labels(expr: str) -> set[str]:
    text = _STRING.sub('""', expr)
    return {label.strip() for m in _GROUPING.finditer(text) for label in m.group(2).split(",") if label.strip()}


def problems(expr: str) -> list[str]:
    """Everything in `expr` that is not one of Pavana's metrics, their labels, or PromQL."""
    found: list[str] = []
    metrics, functions, selectors = names(expr)
    if not metrics:
        found.append(f"{expr!r}: names no metric")
    for fn in sorted(functions - FUNCTIONS):
        found.append(f"{expr!r}: unknown function {fn!r}")
    for metric in sorted(metrics):
        if metric_family(metric) is None:
            found.append(f"{expr!r}: {metric!r} is not one of Pavana's metrics")
    known = [m for m in metrics if metric_family(m)]
    for metric, labels in selectors:
        allowed = _labels_of(metric) if metric else frozenset().union(*(_labels_of(m) for m in known))
        for label in sorted(labels - allowed - {"__name__"}):
            found.append(f"{expr!r}: {metric or 'the selector'} has no label {label!r}")
    available = frozenset().union(*(_labels_of(m) for m in known)) if known else frozenset()
    for label in sorted(grouping_labels(expr) - available):
        found.append(f"{expr!r}: groups by {label!r}, which none of its metrics carries")
    if "histogram_quantile" in functions and not any(m.endswith("_bucket") for m in known):
        found.append(f"{expr!r}: histogram_quantile needs a histogram's _bucket series")
    for metric in known:
        if METRICS[metric_family(metric)][0] == "counter" and not re.search(r"\b(rate|irate|increase)\s*\(", expr):
            found.append(f"{expr!r}: the counter {metric} is only meaningful through rate() or increase()")
    return found


def label_values_problems(query: str) -> list[str]:
    """A Grafana variable query `label_values(metric, label)` names a metric and one of its labels."""
    m = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query)
    if m is None:
        return [f"{query!r}: expected label_values(metric, label)"]
    metric, label = m.groups()
    if metric_family(metric) is None:
        return [f"{query!r}: {metric!r} is not one of Pavana's metrics"]
    if label not in _labels_of(metric):
        return [f"{query!r}: {metric} has no label {label!r}"]
    return []
