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
