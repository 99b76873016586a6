"""The RayService's `serveConfigV2` is a config Ray Serve accepts, and its import path and
arguments — with the spec from the ConfigMap and the keys from the Secret, as a pod sees them —
build Pavana's application: a deployment `<stage>-<site>` per pool and site, and the Ingress.
No Ray cluster is needed to build an application."""

from __future__ import annotations

import importlib
import secrets
from pathlib import Path, PurePosixPath

import pytest
import yaml

from cluster.spec import ClusterSpec
from controller.serving import GRPC_SERVICER_FUNCTIONS
from deploy_checks import ManifestError, container_ports, pod_templates, secret_value, serve_config
from deploy_fixtures import OVERLAYS, one, rendered
from deploy_render import Resource

APP_ENV = ("PAVANA_API_KEYS", "PAVANA_OPERATOR_TOKEN")


def the_app(resources: list[Resource]) -> dict:
    config = serve_config(one(resources, "RayService"))
    (app,) = config["applications"]
    return app


def spec_source(resources: list[Resource], spec_path: str) -> tuple[str, str]:
    """(ConfigMap name, key) that every Ray container mounts at `spec_path`."""
    rayservice = one(resources, "RayService")
    path = PurePosixPath(spec_path)
    sources = set()
    for where, template in pod_templates(rayservice):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        ray_container = template["spec"]["containers"][0]
        mounts = [m for m in ray_container.get("volumeMounts", []) if PurePosixPath(m["mountPath"]) == path.parent]
        assert len(mounts) == 1, f"{where}: nothing mounted at {path.parent}"
        volume = volumes[mounts[0]["name"]]
        assert "configMap" in volume, f"{where}: {path.parent} is not a ConfigMap"
        sources.add((volume["configMap"]["name"], path.name))
    assert len(sources) == 1, f"Ray pods mount different specs: {sources}"
    return sources.pop()


def pod_env(resources: list[Resource]) -> dict[str, str]:
    """The Pavana variables of the head's Ray container, resolved from the Secret; each
    worker group's container must see the same."""
    rayservice = one(resources, "RayService")
    envs = []
    for _, template in pod_templates(rayservice):
        env = {}
        for var in template["spec"]["containers"][0].get("env", []):
            if var["name"] in APP_ENV:
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = secret_value(one(resources, "Secret", ref["name"]), ref["key"])
        envs.append(env)
    assert all(e == envs[0] for e in envs), "Ray containers see different keys"
    return envs[0]


def build(resources: list[Resource], tmp_path: Path, monkeypatch, env: dict[str, str] | None = None):
    """Import the builder as Serve does and call it with the pod's spec file and environment."""
    from ray.serve._private.build_app import build_app

    app = the_app(resources)
    name, key = spec_source(resources, app["args"]["spec"])
    spec_file = tmp_path / key
    spec_file.write_text(one(resources, "ConfigMap", name)["data"][key])
    for var, value in (env if env is not None else pod_env(resources)).items():
        monkeypatch.setenv(var, value)
    module, _, attr = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attr)
    application = builder({**app["args"], "spec": str(spec_file)})
    return build_app(application, name=app["name"]), ClusterSpec.from_yaml(spec_file)


def real_keys() -> dict[str, str]:
    """What docs/kubernetes.md has an operator put into the Secret."""
    return {"PAVANA_API_KEYS": f"pk-{secrets.token_urlsafe(16)},pk-{secrets.token_urlsafe(16)}", "PAVANA_OPERATOR_TOKEN": f"po-{secrets.token_urlsafe(24)}"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_matches_the_pods(overlay):
    resources = rendered(f"overlays/{overlay}")
    config = serve_config(one(resources, "RayService"))
    head = one(resources, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    ports = container_ports(head)
    assert config["http_options"]["port"] == ports["serve"]
    assert config["http_options"]["host"] == "0.0.0.0"  # reachable from the Service, not only the pod
    assert config["grpc_options"]["port"] == ports["grpc"]
    assert config["grpc_options"]["grpc_servicer_functions"] == GRPC_SERVICER_FUNCTIONS
    app = the_app(resources)
    assert app["import_path"] == "controller.app:build"
    assert set(app["args"]) == {"spec"}  # keys come from the environment, never the config


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda c: c["applications"][0].update(import_pth="controller.app:build"), "import_pth"),
        (lambda c: c["applications"][0].pop("import_path"), "import_path"),
        (lambda c: c["http_options"].update(port="eight thousand"), "port"),
        (lambda c: c.update(proxy_location="Everywhere"), "proxy_location"),
    ],
    ids=["misspelt", "no-import-path", "port-type", "proxy-location"],
)
def test_serve_schema_refuses_a_wrong_field(change, says):
    rayservice = one(rendered("base"), "RayService")
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    change(config)
    rayservice["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    with pytest.raises(ManifestError, match=says):
        serve_config(rayservice)


def test_serve_config_must_be_yaml_text():
    rayservice = one(rendered("base"), "RayService")
    rayservice["spec"]["serveConfigV2"] = "applications: [unclosed"
    with pytest.raises(ManifestError, match="not YAML"):
        serve_config(rayservice)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_application_builds_from_the_configmap_and_the_secret(overlay, tmp_path, monkeypatch):
    resources = rendered(f"overlays/{overlay}")
    # cpu-local carries its own development keys; the others take what the guide has one set
    env = None if overlay == "cpu-local" else real_keys()
    built, spec = build(resources, tmp_path, monkeypatch, env)
    expected = {f"{stage}-{site.name}" for site in spec.sites for stage in spec.pools}
    assert {d.name for d in built.deployments} == expected | {"Ingress"}
    assert built.ingress_deployment_name == "Ingress"
    for deployment in built.deployments:
        if deployment.name == "Ingress":
            continue
        stage, _, site = deployment.name.partition("-")
        assert set(deployment.ray_actor_options["resources"]) == {f"site.{site}"}
        assert deployment.ray_actor_options["num_gpus"] == spec.pools[stage].num_gpus
    keys = env or pod_env(resources)
    bound = built_ingress_spec(built)
    assert bound["api_keys"] == keys["PAVANA_API_KEYS"].split(",")
    assert bound["operator_token"] == keys["PAVANA_OPERATOR_TOKEN"]
    assert bound["redis_url"] == spec.redis_url


def built_ingress_spec(built) -> dict:
    """The spec the Ingress is constructed with (its first init argument)."""
    ingress = next(d for d in built.deployments if d.name == "Ingress")
    return ingress.init_args[0]


def test_cpu_local_keys_reach_the_application(tmp_path, monkeypatch):
    resources = rendered("overlays/cpu-local")
    env = pod_env(resources)
    assert set(env) == set(APP_ENV) and all(env.values())
    built, _ = build(resources, tmp_path, monkeypatch)
    assert built_ingress_spec(built)["operator_token"] == env["PAVANA_OPERATOR_TOKEN"]


def test_the_base_placeholders_are_refused(tmp_path, monkeypatch):
    """An operator who forgets to set the Secret gets no open cluster: the placeholder token is
    too short for the spec, so the application does not deploy."""
    resources = rendered("base")
    assert pod_env(resources)["PAVANA_OPERATOR_TOKEN"] == "CHANGE-ME"
    with pytest.raises(ValueError, match="operator_token"):
        build(resources, tmp_path, monkeypatch)


def test_a_spec_path_that_no_configmap_holds_is_found():
    resources = rendered("base")
    with pytest.raises(AssertionError, match="nothing mounted at /etc/pavana/other"):
        spec_source(resources, "/etc/pavana/other/cluster.yaml")
