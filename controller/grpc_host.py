"""Bind Ray Serve's gRPC proxy to the host `pavana up` serves on, like its HTTP proxy.

Ray Serve 2.60 binds the gRPC proxy to every interface (`[::]:port`) and has no option to
choose; its HTTP proxy takes `HTTPOptions.host`. Pavana serves on 127.0.0.1 unless told
otherwise, so that a fresh `pavana up` exposes nothing beyond the machine. This module runs in
every worker process of the driver's job as Ray's `worker_process_setup_hook`, and the proxy
actors are among them: it rewrites the one address Serve gives its gRPC server.

When Ray's internals change so that the rewrite cannot be installed, the hook fails the worker
loudly rather than leaving gRPC open on every interface.
"""

from __future__ import annotations

import os

HOST_ENV = "PAVANA_GRPC_HOST"
SETUP_HOOK = "controller.grpc_host.bind_grpc_proxy"


def address_on(host: str, address: str) -> str:
    """`address` ("[::]:9000") with its host replaced; IPv6 hosts go in brackets."""
    port = address.rsplit(":", 1)[1]
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{bracketed}:{port}"


def bind_grpc_proxy() -> None:
    """The setup hook: from now on, this process's Serve gRPC server listens on $PAVANA_GRPC_HOST,
    and with the HAProxy ingress, the HAProxy configuration it renders is Pavana's
    (`controller/haproxy_config.py`: its pages on the frontends' host, its errors in OpenAI's
    shape, room for Pavana's header limits)."""
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        from controller.haproxy_config import install

        install()
    host = os.environ.get(HOST_ENV)
    if not host:
        return
    from ray.serve._private import default_impl

    original = default_impl.add_grpc_address
    if getattr(original, "pavana_host", None) == host:
        return

    def add_grpc_address(server, server_address: str):
        return original(server, address_on(host, server_address))

    add_grpc_address.pavana_host = host  # type: ignore[attr-defined]
    default_impl.add_grpc_address = add_grpc_address


def runtime_env(host: str) -> dict[str, object]:
    """The job's runtime environment that installs the hook with `host`."""
    return {"worker_process_setup_hook": SETUP_HOOK, "env_vars": {HOST_ENV: host}}
