"""The keeper of the reconcile loop: when it starts the loop, and that it fails fast on a bad spec."""

from __future__ import annotations

import importlib.util
import threading

import pytest

from cluster.spec import SpecError
from deploy_fixtures import KUBERAY, one, rendered

SCRIPT = KUBERAY / "reconciler" / "keep_reconciler.py"


@pytest.fixture(scope="module")
def keeper():
    spec = importlib.util.spec_from_file_location("keep_reconciler", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "app_status, alive, step",
    [
        (None, False, "wait"),  # no application yet
        ("DEPLOYING", False, "wait"),
        ("DEPLOY_FAILED", False, "wait"),
        ("RUNNING", False, "start"),
        ("UNHEALTHY", False, "start"),  # a pool is down: the loop is what brings it back
        ("RUNNING", True, "idle"),
        ("DEPLOYING", True, "idle"),  # an update in progress keeps the running loop
    ],
)
def test_starts_the_loop_once_the_application_is_live(keeper, app_status, alive, step):
    assert keeper.next_step(app_status, alive) == step


def test_a_bad_spec_stops_it_before_it_joins_ray(keeper, tmp_path):
    bad = tmp_path / "cluster.yaml"
    bad.write_text("pools: {prefill: {min_replicas: 3, max_replicas: 1}}\n")
    with pytest.raises(SpecError, match="max_replicas"):
        keeper.keep(str(bad), "127.0.0.1:1", "pavana", 0.01, threading.Event())


def test_the_head_sidecar_runs_it_with_the_mounted_spec(keeper):
    rayservice = one(rendered("base"), "RayService")
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    (sidecar,) = [c for c in head["containers"] if c["name"] == "pavana-reconciler"]
    command = [*sidecar["command"], *sidecar["args"]]
    assert command[:2] == ["python", "/opt/pavana/bin/keep_reconciler.py"]
    args = dict(zip(command[2::2], command[3::2]))
    assert args["--address"] == "127.0.0.1:6379"  # the head's GCS, in the same pod
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    assert mounts["/tmp/ray"] == "ray-logs"  # the driver needs the head's Ray session directory
    assert args["--spec"].startswith("/etc/pavana/spec/") and mounts["/etc/pavana/spec"] == "pavana-spec"
    with pytest.raises(SystemExit) as exit_:
        keeper.main(["--help"])
    assert exit_.value.code == 0


@pytest.mark.ray
@pytest.mark.redis
def test_starts_the_reconcile_actor_on_a_real_cluster(keeper, ray_cluster, tmp_path):
    """Against the real local Ray cluster: the keeper waits for the application, then starts
    the detached reconcile actor, which outlives the keeper."""
    import uuid

    import ray
    from ray import serve

    from controller.reconcile import NAMESPACE, RECONCILER_NAME

    app_name = f"keeper-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "cluster.yaml"
    spec.write_text(f"redis_url: redis://127.0.0.1:6379\ntelemetry_prefix: test:{uuid.uuid4().hex}\n")

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Hello:
        def __call__(self, request) -> str:
            return "hello"

    assert not keeper.reconciler_alive()
    stop = threading.Event()
    thread = threading.Thread(target=keeper.keep, args=(str(spec), "unused:0", app_name, 0.2, stop), daemon=True)
    try:
        thread.start()
        stop.wait(1.0)
        assert not keeper.reconciler_alive()  # no application yet: it waits
        serve.run(Hello.bind(), name=app_name, route_prefix=f"/{app_name}")
        assert keeper.application_status(app_name) == "RUNNING"
        for _ in range(300):
            if keeper.reconciler_alive():
                break
            stop.wait(0.2)
        assert keeper.reconciler_alive()
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert keeper.reconciler_alive()  # detached: the keeper's exit leaves it running
        assert ray.is_initialized()  # and it closed no connection it did not open
    finally:
        stop.set()
        thread.join(timeout=10)
        try:
            ray.kill(ray.get_actor(RECONCILER_NAME, namespace=NAMESPACE))
        except ValueError:
            pass
        serve.delete(app_name)
