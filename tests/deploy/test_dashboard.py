"""The Grafana dashboard is valid JSON that Grafana can import, and every query names only
Pavana's metrics and their labels — a misnamed metric would draw an empty panel, not an error."""

from __future__ import annotations

import json

import pytest

from deploy_fixtures import REPO
from promql_names import METRICS, label_values_problems, metric_family, problems

DASHBOARD = REPO / "deploy" / "grafana" / "pavana.json"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def graph_panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def expressions(dashboard: dict) -> list[str]:
    return [t["expr"] for p in graph_panels(dashboard) for t in p["targets"]]


def test_structure_grafana_imports(dashboard):
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
    for panel in graph_panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    for name in ("qos_class", "site"):
        assert label_values_problems(variables[name]["query"]["query"]) == []


def test_every_query_names_only_pavanas_metrics(dashboard):
    found = [p for expr in expressions(dashboard) for p in problems(expr)]
    assert found == []


def test_every_metric_has_a_panel(dashboard):
    used = {metric_family(name) for expr in expressions(dashboard) for name in _metric_names(expr)}
    assert used == set(METRICS)


def _metric_names(expr: str) -> set[str]:
    from promql_names import names

    return names(expr)[0]


def _panel(dashboard: dict, title: str) -> dict:
    (panel,) = [p for p in graph_panels(dashboard) if p["title"] == title]
    return panel


@pytest.mark.parametrize("metric, title", [("pavana_ttft_seconds", "Time to first token P50 / P99"), ("pavana_tbt_seconds", "Time between tokens P50 / P99")])
def test_latency_panels_show_p50_and_p99_from_histograms(dashboard, metric, title):
    exprs = [t["expr"] for t in _panel(dashboard, title)["targets"]]
    assert [e.split(",")[0] for e in exprs] == ["histogram_quantile(0.5", "histogram_quantile(0.99"]
    assert all(f"{metric}_bucket" in e and "by (le, qos_class, site)" in e for e in exprs)


def test_replicas_and_power_panels_compare_both_states(dashboard):
    replicas = " ".join(t["expr"] for t in _panel(dashboard, "Replicas: desired vs running")["targets"])
    assert 'state="desired"' in replicas and 'state="running"' in replicas and "by (pool, site)" in replicas
    power = " ".join(t["expr"] for t in _panel(dashboard, "Site power: available vs drawn")["targets"])
    assert 'kind="available"' in power and 'kind="drawn"' in power
    assert _panel(dashboard, "Site power: available vs drawn")["fieldConfig"]["defaults"]["unit"] == "watt"


def test_request_rate_and_slo_panels(dashboard):
    (rate,) = _panel(dashboard, "Request rate by class")["targets"]
    assert rate["expr"].startswith("sum by (qos_class) (rate(pavana_requests_total")
    for title in ("SLO attainment by class", "KV cache occupancy"):
        defaults = _panel(dashboard, title)["fieldConfig"]["defaults"]
        assert (defaults["unit"], defaults["min"], defaults["max"]) == ("percentunit", 0, 1)
    assert _panel(dashboard, "Queued requests") and _panel(dashboard, "Queued prefill tokens")


@pytest.mark.parametrize(
    "expr, says",
    [
        ("histogram_quantile(0.99, sum by (le) (rate(pavana_ttft_ms_bucket[5m])))", "'pavana_ttft_ms_bucket' is not one of Pavana's metrics"),
        ('pavana_kv_occupancy_ratio{qos_class="interactive"}', "has no label 'qos_class'"),
        ("sum by (pool) (rate(pavana_requests_total[5m]))", "groups by 'pool'"),
        ("sum(pavana_requests_total)", "only meaningful through rate()"),
        ("histogram_quantile(0.99, pavana_ttft_seconds_sum)", "needs a histogram's _bucket series"),
        ("pavana_replicas_bucket", "is not one of Pavana's metrics"),  # a gauge has no buckets
        ("rate(node_cpu_seconds_total[5m])", "'node_cpu_seconds_total' is not one of Pavana's metrics"),
        ("quantile_of(0.5, pavana_replicas)", "unknown function 'quantile_of'"),
        ("vector(1)", "names no metric"),
    ],
    ids=["metric", "label", "group", "counter", "histogram", "gauge-bucket", "foreign", "function", "none"],
)
def test_a_query_with_a_wrong_name_is_refused(expr, says):
    assert any(says in p for p in problems(expr)), problems(expr)


def test_a_dashboard_with_a_wrong_query_fails_the_check(dashboard):
    broken = json.loads(json.dumps(dashboard))
    graph_panels(broken)[0]["targets"][0]["expr"] = "sum(rate(pavana_request_total[5m]))"
    assert [p for expr in expressions(broken) for p in problems(expr)]


def test_variable_queries_name_a_metric_and_its_label():
    assert label_values_problems("label_values(pavana_replicas, site)") == []
    assert "has no label 'qos_class'" in label_values_problems("label_values(pavana_replicas, qos_class)")[0]
    assert "is not one of Pavana's metrics" in label_values_problems("label_values(pavana_replica, site)")[0]


def test_matchers_strings_and_grafana_variables_are_not_metric_names():
    assert problems('sum by (site) (rate(pavana_requests_total{outcome!~"error|timeout", site=~"$site"}[$__rate_interval] offset 5m))') == []
    assert problems("pavana_replicas{state=\"desired\"} - on (pool, site) pavana_replicas{state=\"running\"}") == []
