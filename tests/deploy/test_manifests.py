"""Every overlay renders to objects that Kubernetes and KubeRay accept, and the checks that say
so refuse a wrong field."""

from __future__ import annotations

import pytest

from deploy_checks import (
    ManifestError,
    check_all,
    check_builtin,
    check_custom_resource,
    check_podmonitor,
    check_ray_pods,
    mutated,
    site_resources,
)
from deploy_fixtures import EXTERNAL, OVERLAYS, one, rendered

pytestmark = pytest.mark.usefixtures("crds")

HEAD = "spec.rayClusterConfig.headGroupSpec"
WORKER = "spec.rayClusterConfig.workerGroupSpecs.0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_every_check(overlay):
    resources = rendered(f"overlays/{overlay}")
    check_all(resources, EXTERNAL.get(overlay))
    kinds = sorted(r["kind"] for r in resources)
    assert "RayService" in kinds and "ConfigMap" in kinds and "Secret" in kinds


def test_monitoring_passes_beside_the_base():
    check_all([*rendered("monitoring"), *rendered("base")])


# -- custom resources against KubeRay's CRD schemas -----------------------------------------------
@pytest.mark.parametrize(
    "path, value, says",
    [
        (f"{WORKER}.rayStartParam", {"num-cpus": "4"}, "Additional properties"),  # a misspelt field
        (f"{WORKER}.rayStartParams.num-cpus", 4, "is not of type 'string'"),  # values are strings
        (f"{WORKER}.minReplicas", "one", "is not of type 'integer'"),
        (f"{HEAD}.template.spec.containers.0.ports.0.containerPort", "6379", "is not of type 'integer'"),
        (f"{HEAD}.template.spec.containers.0.resource", {}, "Additional properties"),
        ("spec.serveConfigV2", {"applications": []}, "is not of type 'string'"),
    ],
    ids=["misspelt-field", "int-param", "min-replicas", "port-type", "container-field", "serve-config-type"],
)
def test_crd_schema_refuses_a_wrong_field(path, value, says):
    rayservice = one(rendered("base"), "RayService")
    check_custom_resource(rayservice)
    with pytest.raises(ManifestError, match=says):
        check_custom_resource(mutated(rayservice, path, value))


def test_crd_schema_requires_the_worker_group_bounds():
    rayservice = one(rendered("base"), "RayService")
    del rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"]
    with pytest.raises(ManifestError, match="'maxReplicas' is a required property"):
        check_custom_resource(rayservice)


def test_a_raycluster_is_checked_against_its_own_crd():
    rayservice = one(rendered("base"), "RayService")
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "pavana"}, "spec": rayservice["spec"]["rayClusterConfig"]}
    check_custom_resource(cluster)
    with pytest.raises(ManifestError, match="Additional properties"):
        check_custom_resource(mutated(cluster, "spec.serveConfigV2", "applications: []"))


# -- pods of the RayService ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, value, says",
    [
        (f"{HEAD}.template.spec.containers.0.env.0.valueFrom.secretKeyRef.key", "api-key", "has no key 'api-key'"),
        (f"{WORKER}.template.spec.containers.0.env.1.valueFrom.secretKeyRef.name", "other", "Secret 'other' is not among"),
        (f"{WORKER}.template.spec.volumes.0.configMap.name", "pavana-specs", "ConfigMap 'pavana-specs' is not among"),
        (f"{WORKER}.template.spec.containers.0.volumeMounts.0.name", "spec", "names no volume"),
        (f"{HEAD}.template.spec.containers.0.ports.0.name", "gcs-server-port-name", "at most 15 characters"),
        ((*WORKER.split("."), "template", "metadata", "labels", "pavana.dev/site"), "farm a", "label"),
        ((*WORKER.split("."), "template", "spec", "containers", "0", "resources", "requests", "nvidia.com/gpu"), 1, "extended resource"),
        ("spec.serveService.spec.ports.1.targetPort", 9001, "not a port of the head"),
    ],
    ids=["secret-key", "secret-name", "configmap", "volume-mount", "port-name", "label-value", "gpu-request", "serve-port"],
)
def test_pod_checks_refuse_a_broken_reference(path, value, says):
    resources = rendered("base")
    rayservice = one(resources, "RayService")
    check_ray_pods(rayservice, resources)
    with pytest.raises(ManifestError, match=says):
        check_ray_pods(mutated(rayservice, path, value), resources)


def test_gpu_requests_equal_limits():
    resources = rendered("overlays/gpu")
    rayservice = one(resources, "RayService")
    check_ray_pods(rayservice, resources)
    broken = mutated(rayservice, f"{WORKER}.template.spec.containers.0.resources.requests", {"cpu": "8", "nvidia.com/gpu": 2})
    with pytest.raises(ManifestError, match="nvidia.com/gpu needs a limit, and a request equal to it"):
        check_ray_pods(broken, resources)


# -- built-in kinds -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, name, path, value, says",
    [
        ("Deployment", "pavana-redis", "spec.selector.matchLabels", {"app.kubernetes.io/name": "redis"}, "does not select"),
        ("Deployment", "pavana-redis", "spec.template.spec.containers.0.image", "", "image is required"),
        ("Deployment", "pavana-redis", "apiVersion", "extensions/v1beta1", "must be apps/v1"),
        ("Service", "pavana-redis", "spec.selector", {"app.kubernetes.io/component": "cache"}, "selects no pod"),
        ("Service", "pavana-redis", "spec.ports.0.targetPort", "redis-port", "is not a port name"),
        ("Service", "pavana-redis", "metadata.name", "Pavana_Redis", "DNS subdomain"),
        ("Secret", "pavana-secrets", "data", {"api-keys": "not base64!"}, "not base64"),
        ("Secret", "pavana-secrets", "stringData.operator-token", 1234567890123456, "must be a string"),
        ("ConfigMap", "pavana-spec", ("data", "cluster yaml"), "x", "key 'cluster yaml' is not valid"),
    ],
    ids=["selector", "image", "api-version", "service-selector", "target-port", "name", "base64", "secret-type", "cm-key"],
)
def test_builtin_checks_refuse_a_wrong_field(kind, name, path, value, says):
    resources = rendered("base")
    obj = one(resources, kind, name)
    check_builtin(obj, resources)
    broken = mutated(obj, path, value)
    others = [r for r in resources if r is not obj]
    with pytest.raises(ManifestError, match=says):
        check_builtin(broken, [*others, broken])


def test_claim_needs_storage_and_a_known_access_mode():
    resources = rendered("overlays/gpu")
    claim = one(resources, "PersistentVolumeClaim")
    check_builtin(claim, resources)
    with pytest.raises(ManifestError, match="resources.requests.storage is required"):
        check_builtin(mutated(claim, "spec.resources.requests", {}), resources)
    with pytest.raises(ManifestError, match="accessModes"):
        check_builtin(mutated(claim, "spec.accessModes", ["ReadManyTimes"]), resources)


def test_a_missing_external_configmap_is_refused_unless_declared():
    """As docs/kubernetes.md shows for a recorded wind series: a ConfigMap made with kubectl."""
    resources = rendered("overlays/two-sites")
    check_all(resources, EXTERNAL.get("two-sites"))  # the built-in wind needs nothing outside
    pod = one(resources, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    pod["volumes"].append({"name": "power-traces", "configMap": {"name": "pavana-power-traces"}})
    with pytest.raises(ManifestError, match="ConfigMap 'pavana-power-traces' is not among"):
        check_all(resources)
    check_all(resources, {"ConfigMap": {"pavana-power-traces"}})


def test_unknown_kinds_are_refused():
    with pytest.raises(ManifestError, match="no checks for this kind"):
        check_all([{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}])


# -- monitoring ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, value, says",
    [
        ("spec.podMetricsEndpoints.0.authorization", None, "must send a Bearer token"),
        ("spec.podMetricsEndpoints.0.authorization.credentials.key", "token", "has no key 'token'"),
        ("spec.podMetricsEndpoints.0.port", "http", "is not a port name"),
        (("spec", "selector", "matchLabels", "app.kubernetes.io/component"), "ray-worker-x", "selects no pod"),
    ],
    ids=["no-auth", "secret-key", "port", "selector"],
)
def test_podmonitor_scrapes_the_head_with_the_operator_token(path, value, says):
    resources = rendered("base")
    monitor = one(rendered("monitoring"), "PodMonitor")
    check_podmonitor(monitor, resources)
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": "pavana-secrets", "key": "operator-token"}
    with pytest.raises(ManifestError, match=says):
        check_podmonitor(mutated(monitor, path, value), resources)


def test_site_resources_parse_as_kuberay_passes_them():
    assert site_resources({"resources": '"{\\"site.farm-a\\": 1000}"'}) == {"site.farm-a": 1000}
    assert site_resources({}) == {}
    with pytest.raises(ManifestError, match="quoted JSON object"):
        site_resources({"resources": '{"site.farm-a": 1000}'})
    with pytest.raises(ManifestError, match="not JSON"):
        site_resources({"resources": '"{site.farm-a: 1000}"'})


def scrape_job_problems(job: dict, resources: list) -> list[str]:
    """Why a plain Prometheus job would not scrape the Ray head's /metrics with the token."""
    rayservice = one(resources, "RayService")
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    labels, annotations = head["metadata"]["labels"], head["metadata"]["annotations"]
    found = []
    keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    label_rule = next((r for r in keep if r["source_labels"][0].startswith("__meta_kubernetes_pod_label_")), None)
    if label_rule is None:
        found.append("no keep rule on pod labels")
    else:
        names = [s.removeprefix("__meta_kubernetes_pod_label_") for s in label_rule["source_labels"]]
        values = [labels.get(k.replace("app_kubernetes_io_", "app.kubernetes.io/"), "") for k in names]
        if ";".join(values) != label_rule["regex"]:
            found.append(f"keep rule {label_rule['regex']!r} does not match the head's labels {values}")
    ports = {p["name"]: p["containerPort"] for c in head["spec"]["containers"] for p in c.get("ports", [])}
    if int(annotations.get("prometheus.io/port", 0)) != ports.get("serve"):
        found.append("prometheus.io/port is not the head's serve port")
    if annotations.get("prometheus.io/path") != job["metrics_path"] or job["metrics_path"] != "/metrics":
        found.append("the path annotation and the job's metrics_path disagree")
    auth = job.get("authorization") or {}
    secret_dir, _, key = auth.get("credentials_file", "").rpartition("/")
    if auth.get("type") != "Bearer" or not secret_dir.endswith("/pavana-secrets") or key not in one(resources, "Secret")["stringData"]:
        found.append("the job does not send the operator token from the Secret pavana-secrets")
    return found


def test_plain_prometheus_job_scrapes_the_head_with_the_token():
    import yaml

    from deploy_fixtures import KUBERAY

    (job,) = yaml.safe_load((KUBERAY / "monitoring" / "prometheus-scrape.yaml").read_text())["scrape_configs"]
    resources = rendered("base")
    assert scrape_job_problems(job, resources) == []
    job["authorization"]["credentials_file"] = "/etc/prometheus/secrets/pavana-secrets/token"
    job["relabel_configs"][0]["regex"] = "pavana;ray-worker"
    assert len(scrape_job_problems(job, resources)) == 2

