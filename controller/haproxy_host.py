"""Keep HAProxy's stats page and metrics endpoint on the host Pavana serves on.

With the `haproxy` ingress (`controller/ingress_mode.py`), Ray Serve 2.60 renders an HAProxy
configuration whose stats page (backend addresses and states) and Prometheus endpoint bind to
every interface, with no setting to choose; its frontends take `HTTPOptions.host`. Pavana
serves on 127.0.0.1 unless told otherwise, so this rewrites those two bind lines to the
frontends' host. It runs from the worker setup hook (`controller.grpc_host`) in the process
that renders the configuration; when Ray's template changes so that the lines are not found,
it fails that process loudly rather than leave the pages open on every interface.
"""

from __future__ import annotations

# The bind lines of Ray Serve's template, and what they become.
OPEN_BINDS = {
    "bind :{{ config.metrics_port }}": "bind {{ config.frontend_host }}:{{ config.metrics_port }}",
    "bind *:{{ config.stats_port }}": "bind {{ config.frontend_host }}:{{ config.stats_port }}",
}


def on_frontend_host(template: str) -> str:
    """`template` with the stats and metrics frontends bound like the serving frontends."""
    missing = [line for line in OPEN_BINDS if line not in template and OPEN_BINDS[line] not in template]
    if missing:
        raise RuntimeError(f"Ray Serve's HAProxy template has changed: {missing} not found; refusing to expose HAProxy's pages")
    for line, bound in OPEN_BINDS.items():
        template = template.replace(line, bound)
    return template


def bind_haproxy_pages() -> None:
    from ray.serve._private import haproxy

    haproxy.HAPROXY_CONFIG_TEMPLATE = on_frontend_host(haproxy.HAPROXY_CONFIG_TEMPLATE)
