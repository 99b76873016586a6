"""Keeps Pavana's reconcile loop alive on a KubeRay cluster.

KubeRay deploys the Serve application from `serveConfigV2`, but the reconcile loop (observe ▸
plan ▸ act) is a detached Ray actor that `pavana up` starts beside the application. On
Kubernetes this script does that job: it runs as a sidecar of the Ray head, joins the cluster
as a driver, and starts the actor once the application runs — and again whenever the actor
is gone (a head restart loses every actor). Starting is idempotent (`get_if_exists`), so two
keepers, say during a RayService upgrade, still share one loop.

The image installs it as /opt/pavana/bin/keep_reconciler.py (deploy/Dockerfile).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

log = logging.getLogger("pavana.keeper")

# Serve application states in which the pools exist and can be planned for.
LIVE_STATES = frozenset({"RUNNING", "UNHEALTHY"})


def next_step(app_status: str | None, reconciler_alive: bool) -> str:
    """'start' when the application is live and no reconcile actor runs; 'idle' when one
    runs; 'wait' while the application is not up (missing, deploying, failed)."""
    if reconciler_alive:
        return "idle"
    return "start" if app_status in LIVE_STATES else "wait"


def application_status(app_name: str) -> str | None:
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return None
    return getattr(app.status, "value", str(app.status))  # a str enum: "RUNNING", ...


def reconciler_alive() -> bool:
    import ray

    from controller.reconcile import NAMESPACE, RECONCILER_NAME

    try:
        ray.get_actor(RECONCILER_NAME, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def keep(spec_path: str, address: str, app_name: str, period_s: float, stop: threading.Event) -> None:
    from cluster.spec import ClusterSpec

    spec = ClusterSpec.from_yaml(spec_path)  # fails fast, with every bad field named

    import ray

    from controller.reconcile import start_reconciler

    joined = False  # only a connection made here is closed here
    while not stop.is_set():
        try:
            if not ray.is_initialized():
                ray.init(address=address, namespace="pavana", log_to_driver=False)
                joined = True
                log.info("joined the Ray cluster at %s", address)
            step = next_step(application_status(app_name), reconciler_alive())
            if step == "start":
                start_reconciler(spec, app_name=app_name)
                log.info("started the reconcile loop for application %r", app_name)
        except Exception as exc:  # the head may be starting or restarting: try again later
            log.warning("keeper: %s: %s", type(exc).__name__, exc)
            if joined:
                ray.shutdown()
                joined = False
        stop.wait(period_s)
    if joined:
        ray.shutdown()  # the reconcile actor is detached: it outlives this driver


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="the cluster spec the application was built from")
    parser.add_argument("--address", default="127.0.0.1:6379", help="the Ray head's GCS address")
    parser.add_argument("--app", default="pavana", help="the Serve application's name")
    parser.add_argument("--period", type=float, default=15.0, help="seconds between checks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    keep(args.spec, args.address, args.app, args.period, stop)


if __name__ == "__main__":
    main()
