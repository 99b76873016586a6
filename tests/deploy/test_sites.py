"""Each overlay's cluster spec and its Ray pods agree: every site is a labelled worker group
carrying `site.<name>`, pools fit the pods, and each overlay's spec is the one it claims to be."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.spec import ClusterSpec
from deploy_checks import site_resources
from deploy_fixtures import OVERLAYS, REPO, one, rendered
from deploy_render import Resource

SPECS = REPO / "deploy" / "specs"
SITE_LABEL = "pavana.dev/site"


def overlay_spec(resources: list[Resource], tmp_path: Path, name: str = "cluster.yaml") -> ClusterSpec:
    """The spec in the ConfigMap, parsed as the application builder parses it."""
    path = tmp_path / name
    path.write_text(one(resources, "ConfigMap", "pavana-spec")["data"]["cluster.yaml"])
    return ClusterSpec.from_yaml(path)


def cluster_config(resources: list[Resource]) -> dict:
    return one(resources, "RayService")["spec"]["rayClusterConfig"]


def site_groups(resources: list[Resource]) -> dict[str, dict]:
    """Worker groups by the site whose resource they carry."""
    groups: dict[str, dict] = {}
    for group in cluster_config(resources)["workerGroupSpecs"]:
        sites = [name.removeprefix("site.") for name in site_resources(group["rayStartParams"]) if name.startswith("site.")]
        assert len(sites) == 1, f"group {group['groupName']} carries sites {sites}"
        groups[sites[0]] = group
    return groups


def groups_match_sites(spec: ClusterSpec, resources: list[Resource]) -> list[str]:
    """Why the spec's sites and the RayService's worker groups disagree (empty when they agree)."""
    problems = []
    groups = site_groups(resources)
    if set(groups) != {s.name for s in spec.sites}:
        problems.append(f"sites {sorted(s.name for s in spec.sites)} but worker groups for {sorted(groups)}")
    head = cluster_config(resources)["headGroupSpec"]
    if any(name.startswith("site.") for name in site_resources(head["rayStartParams"])):
        problems.append("the head carries a site resource: pool replicas could land on it")
    for site, group in groups.items():
        labels = group["template"]["metadata"]["labels"]
        if labels.get(SITE_LABEL) != site:
            problems.append(f"group {group['groupName']}: label {SITE_LABEL}={labels.get(SITE_LABEL)!r}, expected {site!r}")
        if group["groupName"] != f"site-{site}":
            problems.append(f"group {group['groupName']}: expected the name site-{site}")
        cpus = float(group["rayStartParams"].get("num-cpus", 0))
        gpus = float(group["rayStartParams"].get("num-gpus", 0))
        for stage, pool in spec.pools.items():
            if pool.num_cpus > cpus or pool.num_gpus > gpus:
                problems.append(f"{stage}@{site}: a replica needs {pool.num_cpus} CPUs and {pool.num_gpus} GPUs, a pod offers {cpus} and {gpus}")
        capacity = group["maxReplicas"] * min(
            [cpus // p.num_cpus for p in spec.pools.values() if p.num_cpus] + [gpus // p.num_gpus for p in spec.pools.values() if p.num_gpus] or [0]
        )
        needed = sum(p.min_replicas for p in spec.pools.values())
        if capacity < needed:
            problems.append(f"site {site}: its pods hold {capacity:.0f} replicas at most, its pools' minimums need {needed}")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_site_is_a_labelled_worker_group(overlay, tmp_path):
    resources = rendered(f"overlays/{overlay}")
    spec = overlay_spec(resources, tmp_path)
    assert groups_match_sites(spec, resources) == []


def test_a_site_without_its_worker_group_is_found(tmp_path):
    resources = rendered("overlays/two-sites")
    spec = overlay_spec(resources, tmp_path)
    cluster_config(resources)["workerGroupSpecs"].pop()
    assert groups_match_sites(spec, resources) == ["sites ['farm-a', 'farm-b'] but worker groups for ['farm-a']"]


def test_a_mislabelled_or_too_small_group_is_found(tmp_path):
    resources = rendered("overlays/gpu")
    spec = overlay_spec(resources, tmp_path)
    group = cluster_config(resources)["workerGroupSpecs"][0]
    group["template"]["metadata"]["labels"][SITE_LABEL] = "elsewhere"
    del group["rayStartParams"]["num-gpus"]
    problems = groups_match_sites(spec, resources)
    assert any("expected 'local'" in p for p in problems)
    assert any("colocated@local: a replica needs 4.0 CPUs and 1.0 GPUs" in p for p in problems)


def _comparable(spec: ClusterSpec, *, drop: tuple[str, ...] = ()) -> dict:
    """The spec as data, with trace files by name (their folder differs inside a pod)."""
    data = spec.model_dump(mode="json")
    for site in data["sites"]:
        if site["power"]["kind"] == "trace":
            site["power"]["path"] = Path(site["power"]["path"]).name
    for dotted in drop:
        *parents, last = dotted.split(".")
        node = data
        for p in parents:
            node = node[p]
        node.pop(last)
    return data


def test_two_sites_overlay_serves_the_two_sites_spec(tmp_path):
    ours = overlay_spec(rendered("overlays/two-sites"), tmp_path)
    theirs = ClusterSpec.from_yaml(SPECS / "two-sites.yaml")
    assert _comparable(ours, drop=("redis_url",)) == _comparable(theirs, drop=("redis_url",))
    assert all(s.power.kind == "wind" for s in ours.sites)  # no data file to mount in the pods


def test_base_serves_the_default_spec_with_in_cluster_redis(tmp_path, real_default_model):
    ours = overlay_spec(rendered("base"), tmp_path)
    theirs = ClusterSpec.from_yaml(SPECS / "default.yaml")
    drop = ("redis_url", "engine.num_threads")
    assert _comparable(ours, drop=drop) == _comparable(theirs, drop=drop)
    redis = one(rendered("base"), "Service", "pavana-redis")
    assert ours.redis_url == f"redis://{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}/0"


def test_external_redis_differs_from_base_only_in_the_url(tmp_path):
    resources = rendered("overlays/external-redis")
    ours = overlay_spec(resources, tmp_path, "external.yaml")
    base = overlay_spec(rendered("base"), tmp_path, "base.yaml")
    assert _comparable(ours, drop=("redis_url",)) == _comparable(base, drop=("redis_url",))
    assert ours.redis_url != base.redis_url
    assert not [r for r in resources if r["metadata"]["name"] == "pavana-redis"]


def test_gpu_overlay_runs_vllm_on_gpu_workers(tmp_path):
    resources = rendered("overlays/gpu")
    spec = overlay_spec(resources, tmp_path)
    assert spec.engine.backend == "vllm"
    assert spec.model.path and Path(spec.model.path).is_absolute()
    assert all(pool.num_gpus >= 1 for pool in spec.pools.values())
    (group,) = cluster_config(resources)["workerGroupSpecs"]
    container = group["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("-gpu")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert any(Path(spec.model.path).is_relative_to(m) for m in mounts)


# -- GPU pools: vLLM, NVML access for power modes, the autoscaler's bounds -----------------------
def nvml_access_problems(spec: ClusterSpec, resources: list[Resource]) -> list[str]:
    """Sites whose power modes lock GPU clocks (throughput below full) on pods that cannot:
    NVML's clock locks need root or CAP_SYS_ADMIN, and without them a replica refuses to start."""
    problems = []
    groups = site_groups(resources)
    for site in spec.sites:
        capped = [m.name for m in site.power_modes if m.throughput_fraction < 1]
        if not capped or not any(p.num_gpus for p in spec.pools.values()):
            continue
        container = groups[site.name]["template"]["spec"]["containers"][0]
        context = container.get("securityContext") or {}
        root = context.get("runAsUser") == 0
        admin = "SYS_ADMIN" in ((context.get("capabilities") or {}).get("add") or [])
        if not (root and admin):
            problems.append(f"site {site.name}: power modes {capped} lock GPU clocks, but its GPU container runs without root and SYS_ADMIN")
    return problems


def test_gpu_overlay_pools_are_vllm_on_gpus_within_their_bounds(tmp_path):
    from controller.app import autoscaling_config

    resources = rendered("overlays/gpu")
    spec = overlay_spec(resources, tmp_path)
    assert spec.engine.backend == "vllm"
    groups = site_groups(resources)
    for site in spec.sites:
        group = groups[site.name]
        container = group["template"]["spec"]["containers"][0]
        gpus_per_pod = float(group["rayStartParams"]["num-gpus"])
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus_per_pod
        replicas_at_most = group["maxReplicas"] * gpus_per_pod
        for stage, pool in spec.pools.items():
            assert pool.num_gpus >= 1, f"{stage}: a vLLM replica needs a GPU of its own"
            assert 1 <= pool.min_replicas <= pool.initial_replicas <= pool.max_replicas
            serve = autoscaling_config(stage, pool, site, spec)
            assert serve["max_replicas"] == pool.max_replicas and serve["min_replicas"] <= pool.min_replicas
            assert serve["min_replicas"] <= serve["initial_replicas"] <= serve["max_replicas"]
        needed = sum(p.max_replicas * p.num_gpus for p in spec.pools.values())
        assert replicas_at_most >= needed, f"site {site.name}: pods hold {replicas_at_most} GPUs, the pools' maximums need {needed}"
        assert sum(p.max_replicas for p in spec.pools.values()) <= site.max_replicas


def test_gpu_overlay_power_modes_match_the_nvml_access_of_its_pods(tmp_path):
    resources = rendered("overlays/gpu")
    spec = overlay_spec(resources, tmp_path)
    assert nvml_access_problems(spec, resources) == []
    capped = spec.model_copy(update={"sites": [
        s.model_copy(update={"power_modes": [*s.power_modes, type(s.power_modes[0])(name="capped", power_w=450.0, throughput_fraction=0.6)]})
        for s in spec.sites
    ]})
    assert nvml_access_problems(capped, resources) == [
        "site local: power modes ['capped'] lock GPU clocks, but its GPU container runs without root and SYS_ADMIN"
    ]
    container = site_groups(resources)["local"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {"runAsNonRoot": False, "runAsUser": 0, "capabilities": {"add": ["SYS_ADMIN"]}}
    assert nvml_access_problems(capped, resources) == []
