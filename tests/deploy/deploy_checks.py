"""Checks of rendered manifests that need no cluster.

- Custom resources (RayService, RayCluster) against KubeRay's own CRD schemas (carried in
  tests/deploy/kuberay_crds with their licence), with unknown fields refused as the API server's strict field validation does.
- Built-in kinds (Deployment, Service, Secret, ConfigMap, PersistentVolumeClaim): required
  fields, names, and the references between objects — selectors that select a pod, named
  ports that exist, Secrets, ConfigMaps, claims and volumes that a pod names.
- A RayService's `serveConfigV2` against Ray Serve's own `ServeDeploySchema`.
- A PodMonitor: it selects a Ray head, names a port it has, and sends a token from a Secret
  that exists.

Every check raises `ManifestError` listing all problems found, so one run shows them all.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import json
import re
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml

from deploy_render import Resource, is_builtin, resource_id

REPO = Path(__file__).resolve().parents[2]
KUBERAY_CRDS = Path(__file__).resolve().parent / "kuberay_crds"
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayCluster": "ray.io_rayclusters.yaml"}

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_ACCESS_MODES = {"ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"}


class ManifestError(ValueError):
    """A manifest that Kubernetes, KubeRay or Ray Serve would refuse; lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n  ".join(["manifest problems:", *problems]))


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise ManifestError(problems)


# -- CRD schemas --------------------------------------------------------------------------------
def strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists an object's fields: Kubernetes
    drops (or, with strict field validation, refuses) them, and a silently dropped field is
    a setting that never took effect."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@functools.cache
def crd_validator(kind: str, version: str) -> jsonschema.protocols.Validator:
    path = KUBERAY_CRDS / CRD_FILES[kind]
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    served = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served")]
    if not served:
        raise ManifestError([f"{kind}: version {version!r} is not served by {path.name}"])
    schema = strict(served[0]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def check_custom_resource(obj: Resource) -> None:
    kind = obj.get("kind")
    group, _, version = obj.get("apiVersion", "").rpartition("/")
    if kind not in CRD_FILES or group != "ray.io":
        raise ManifestError([f"{resource_id(obj)}: not a KubeRay kind"])
    problems = _metadata_problems(obj)
    for err in sorted(crd_validator(kind, version).iter_errors(obj), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "(top)"
        problems.append(f"{kind}/{obj['metadata'].get('name')}: {where}: {err.message[:300]}")
    _raise_if(problems)


# -- pod templates ------------------------------------------------------------------------------
def pod_templates(obj: Resource) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every pod an object makes."""
    kind, name = obj.get("kind"), obj["metadata"]["name"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        yield f"{kind}/{name}", obj["spec"]["template"]
    elif kind in ("RayService", "RayCluster"):
        cluster = obj["spec"]["rayClusterConfig"] if kind == "RayService" else obj["spec"]
        yield f"{kind}/{name} head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{kind}/{name} group {group.get('groupName')}", group["template"]


def _by_kind(resources: list[Resource], kind: str) -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for r in resources if r.get("kind") == kind}


def _data_keys(obj: Resource) -> set[str]:
    return set(obj.get("data") or {}) | set(obj.get("stringData") or {})


def _pod_problems(where: str, template: dict[str, Any], resources: list[Resource], external: dict[str, set[str]]) -> list[str]:
    problems: list[str] = []
    spec = template.get("spec") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    problems += _label_problems(where, labels)
    containers = spec.get("containers") or []
    if not containers:
        problems.append(f"{where}: a pod needs at least one container")
    secrets, configmaps, claims = _by_kind(resources, "Secret"), _by_kind(resources, "ConfigMap"), _by_kind(resources, "PersistentVolumeClaim")
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    if len(volumes) != len(spec.get("volumes") or []):
        problems.append(f"{where}: volume names must be unique")
    for vname, volume in volumes.items():
        if "configMap" in volume:
            problems += _reference(where, "ConfigMap", volume["configMap"].get("name"), configmaps, external, volume["configMap"].get("optional"))
        if "secret" in volume:
            problems += _reference(where, "Secret", volume["secret"].get("secretName"), secrets, external, volume["secret"].get("optional"))
        if "persistentVolumeClaim" in volume:
            problems += _reference(where, "PersistentVolumeClaim", volume["persistentVolumeClaim"].get("claimName"), claims, external, False)
    names = [c.get("name") for c in [*containers, *(spec.get("initContainers") or [])]]
    if len(set(names)) != len(names):
        problems.append(f"{where}: container names must be unique, got {names}")
    port_names: list[str] = []
    for c in containers:
        cwhere = f"{where} container {c.get('name')}"
        if not isinstance(c.get("name"), str) or not _DNS_LABEL.match(c["name"]):
            problems.append(f"{cwhere}: name must be a DNS label")
        if not c.get("image"):
            problems.append(f"{cwhere}: image is required")
        for port in c.get("ports") or []:
            if "name" in port:
                port_names.append(port["name"])
                if len(port["name"]) > 15 or not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", port["name"]):
                    problems.append(f"{cwhere}: port name {port['name']!r} must be a lowercase IANA service name of at most 15 characters")
            if not isinstance(port.get("containerPort"), int) or not 0 < port["containerPort"] < 65536:
                problems.append(f"{cwhere}: containerPort must be an integer port, got {port.get('containerPort')!r}")
        mounts = [m.get("mountPath") for m in c.get("volumeMounts") or []]
        if len(set(mounts)) != len(mounts):
            problems.append(f"{cwhere}: mount paths must be unique, got {mounts}")
        for mount in c.get("volumeMounts") or []:
            if mount.get("name") not in volumes:
                problems.append(f"{cwhere}: volumeMount {mount.get('name')!r} names no volume of the pod")
        for env in c.get("env") or []:
            ref = (env.get("valueFrom") or {})
            if "secretKeyRef" in ref:
                r = ref["secretKeyRef"]
                problems += _reference(cwhere, "Secret", r.get("name"), secrets, external, r.get("optional"), key=r.get("key"))
            if "configMapKeyRef" in ref:
                r = ref["configMapKeyRef"]
                problems += _reference(cwhere, "ConfigMap", r.get("name"), configmaps, external, r.get("optional"), key=r.get("key"))
        resources_ = c.get("resources") or {}
        for extended in set(resources_.get("requests") or {}) | set(resources_.get("limits") or {}):
            if "/" in extended and not extended.startswith(("hugepages-", "kubernetes.io/")):
                req, lim = (resources_.get("requests") or {}).get(extended), (resources_.get("limits") or {}).get(extended)
                if lim is None or (req is not None and str(req) != str(lim)):
                    problems.append(f"{cwhere}: extended resource {extended} needs a limit, and a request equal to it")
    if len(set(port_names)) != len(port_names):
        problems.append(f"{where}: port names must be unique in a pod, got {port_names}")
    return problems


def _reference(where: str, kind: str, name: str | None, present: dict[str, Resource], external: dict[str, set[str]], optional: bool | None, key: str | None = None) -> list[str]:
    if name in external.get(kind, set()) or optional:
        return []
    if name not in present:
        return [f"{where}: {kind} {name!r} is not among the manifests"]
    if key is not None and key not in _data_keys(present[name]):
        return [f"{where}: {kind} {name!r} has no key {key!r}"]
    return []


def container_ports(template: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports") or [] if "name" in p}


# -- built-in kinds -----------------------------------------------------------------------------
def _metadata_problems(obj: Resource) -> list[str]:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    where = f"{obj.get('kind')}/{name}"
    problems = []
    if not obj.get("apiVersion") or not obj.get("kind"):
        problems.append(f"{where}: apiVersion and kind are required")
    if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        problems.append(f"{where}: metadata.name must be a lowercase DNS subdomain")
    problems += _label_problems(where, meta.get("labels") or {})
    return problems


def _label_problems(where: str, labels: dict[str, Any]) -> list[str]:
    problems = []
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if (prefix and not _DNS_SUBDOMAIN.match(prefix)) or len(name) > 63 or not _LABEL_NAME.match(name):
            problems.append(f"{where}: label key {key!r} is not valid")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(f"{where}: label {key}={value!r} must be a string of at most 63 name characters")
    return problems


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _service_problems(where: str, spec: dict[str, Any], resources: list[Resource], *, selector_set_by_kuberay: bool = False) -> list[str]:
    problems = []
    ports = spec.get("ports") or []
    if not ports:
        problems.append(f"{where}: a Service needs ports")
    names = [p.get("name") for p in ports]
    if len(ports) > 1 and (None in names or len(set(names)) != len(names)):
        problems.append(f"{where}: several ports need unique names, got {names}")
    for p in ports:
        if not isinstance(p.get("port"), int) or not 0 < p["port"] < 65536:
            problems.append(f"{where}: port must be an integer port, got {p.get('port')!r}")
    if selector_set_by_kuberay or spec.get("type") == "ExternalName":
        return problems
    selector = spec.get("selector") or {}
    pods = [(w, t) for obj in resources for w, t in pod_templates(obj) if _selects(selector, (t.get("metadata") or {}).get("labels") or {})]
    if not pods:
        problems.append(f"{where}: selector {selector} selects no pod of the manifests")
    for p in ports:
        target = p.get("targetPort", p.get("port"))
        for pwhere, template in pods:
            available = container_ports(template)
            if isinstance(target, str) and target not in available:
                problems.append(f"{where}: targetPort {target!r} is not a port name of {pwhere} ({sorted(available)})")
            if isinstance(target, int) and target not in available.values():
                problems.append(f"{where}: targetPort {target} is not a container port of {pwhere}")
    return problems


def check_builtin(obj: Resource, resources: list[Resource], external: dict[str, set[str]] | None = None) -> None:
    """Required fields of the built-in kinds Pavana uses, and the objects they refer to."""
    external = external or {}
    kind, name = obj.get("kind"), (obj.get("metadata") or {}).get("name")
    where = f"{kind}/{name}"
    problems = _metadata_problems(obj)
    spec = obj.get("spec") or {}
    if kind == "Deployment":
        if obj.get("apiVersion") != "apps/v1":
            problems.append(f"{where}: apiVersion must be apps/v1")
        match = (spec.get("selector") or {}).get("matchLabels") or {}
        template = spec.get("template") or {}
        if not match:
            problems.append(f"{where}: spec.selector.matchLabels is required")
        elif not _selects(match, (template.get("metadata") or {}).get("labels") or {}):
            problems.append(f"{where}: spec.selector {match} does not select the pod template's labels")
        problems += _pod_problems(where, template, resources, external)
    elif kind == "Service":
        problems += _service_problems(where, spec, resources)
    elif kind in ("Secret", "ConfigMap"):
        data = obj.get("data") or {}
        string_data = (obj.get("stringData") or {}) if kind == "Secret" else {}
        if kind == "ConfigMap" and "stringData" in obj:
            problems.append(f"{where}: a ConfigMap has no stringData")
        for key, value in {**data, **string_data}.items():
            if not _DATA_KEY.match(str(key)):
                problems.append(f"{where}: key {key!r} is not valid")
            if not isinstance(value, str):
                problems.append(f"{where}: {key} must be a string, got {type(value).__name__}")
        if kind == "Secret":
            for key, value in data.items():
                try:
                    base64.b64decode(str(value), validate=True)
                except binascii.Error:
                    problems.append(f"{where}: data.{key} is not base64 (plain text goes in stringData)")
    elif kind == "PersistentVolumeClaim":
        modes = spec.get("accessModes") or []
        if not modes or set(modes) - _ACCESS_MODES:
            problems.append(f"{where}: accessModes must be among {sorted(_ACCESS_MODES)}, got {modes}")
        if not ((spec.get("resources") or {}).get("requests") or {}).get("storage"):
            problems.append(f"{where}: resources.requests.storage is required")
    else:
        problems.append(f"{where}: no checks for kind {kind}")
    _raise_if(problems)


def secret_value(secret: Resource, key: str) -> str:
    if key in (secret.get("stringData") or {}):
        return secret["stringData"][key]
    return base64.b64decode(secret["data"][key]).decode()


# -- RayService -------------------------------------------------------------------------------
def check_ray_pods(obj: Resource, resources: list[Resource], external: dict[str, set[str]] | None = None) -> None:
    """The pods of a RayService refer only to objects that exist; its serve Service reaches
    ports the head has."""
    external = external or {}
    problems = []
    for where, template in pod_templates(obj):
        problems += _pod_problems(where, template, resources, external)
    serve_service = obj["spec"].get("serveService")
    if serve_service:
        head = obj["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
        where = f"RayService/{obj['metadata']['name']} serveService"
        problems += _service_problems(where, serve_service.get("spec") or {}, resources, selector_set_by_kuberay=True)
        for p in (serve_service.get("spec") or {}).get("ports") or []:
            target = p.get("targetPort", p.get("port"))
            if target not in container_ports(head).values() and target not in container_ports(head):
                problems.append(f"{where}: targetPort {target!r} is not a port of the head")
    _raise_if(problems)


def serve_config(obj: Resource) -> dict[str, Any]:
    """The RayService's `serveConfigV2`, validated by Ray Serve's own schema."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    where = f"RayService/{obj['metadata']['name']}: serveConfigV2"
    text = obj["spec"].get("serveConfigV2")
    if not isinstance(text, str):
        raise ManifestError([f"{where}: must be a string holding Serve's config YAML"])
    try:
        config = yaml.safe_load(text)
        ServeDeploySchema.model_validate(config)
    except yaml.YAMLError as exc:
        raise ManifestError([f"{where}: not YAML: {exc}"]) from None
    except ValidationError as exc:
        raise ManifestError([f"{where}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]) from None
    _raise_if([f"{where}: {p}" for p in unknown_fields(ServeDeploySchema, config)])
    return config


def unknown_fields(model: type, data: Any, at: str = "") -> list[str]:
    """Keys that a pydantic model does not declare, at any depth. Serve's schemas accept and
    ignore them, so a misspelt option would deploy and never take effect."""
    import typing

    from pydantic import BaseModel

    if not isinstance(data, dict):
        return []
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    found = []
    for key, value in data.items():
        where = f"{at}.{key}" if at else str(key)
        if key not in fields:
            found.append(f"{where}: unknown field")
            continue
        pending = [fields[key].annotation]
        while pending:
            kind = pending.pop()
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                if isinstance(value, list):
                    found += [p for i, v in enumerate(value) for p in unknown_fields(kind, v, f"{where}.{i}")]
                else:
                    found += unknown_fields(kind, value, where)
            else:
                pending.extend(typing.get_args(kind))
    return found


def site_resources(ray_start_params: dict[str, str]) -> dict[str, float]:
    """The custom resources of `rayStartParams.resources`, written as KubeRay passes them to a
    shell: a JSON object inside double quotes, its own quotes escaped."""
    raw = ray_start_params.get("resources")
    if raw is None:
        return {}
    text = raw.strip()
    if not (text.startswith('"') and text.endswith('"')):
        raise ManifestError([f"rayStartParams.resources must be a quoted JSON object like '\"{{\\\"site.a\\\": 1}}\"', got {raw!r}"])
    try:
        return json.loads(text[1:-1].replace('\\"', '"'))
    except json.JSONDecodeError as exc:
        raise ManifestError([f"rayStartParams.resources is not JSON inside its quotes: {exc}"]) from None


def check_podmonitor(obj: Resource, resources: list[Resource]) -> None:
    """It selects a Ray head pod, scrapes a port that pod names, and authenticates with a
    Bearer token from a Secret key that exists (`/metrics` is closed without the operator token)."""
    where = f"PodMonitor/{obj['metadata']['name']}"
    problems = _metadata_problems(obj)
    if obj.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"{where}: apiVersion must be monitoring.coreos.com/v1")
    selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    pods = [(w, t) for r in resources for w, t in pod_templates(r) if _selects(selector, (t.get("metadata") or {}).get("labels") or {})]
    if not pods:
        problems.append(f"{where}: selector {selector} selects no pod of the manifests")
    secrets = _by_kind(resources, "Secret")
    endpoints = (obj.get("spec") or {}).get("podMetricsEndpoints") or []
    if not endpoints:
        problems.append(f"{where}: podMetricsEndpoints is required")
    for i, ep in enumerate(endpoints):
        for pwhere, template in pods:
            if ep.get("port") not in container_ports(template):
                problems.append(f"{where}: endpoint {i} port {ep.get('port')!r} is not a port name of {pwhere}")
        auth = ep.get("authorization") or {}
        cred = auth.get("credentials") or {}
        if auth.get("type", "Bearer") != "Bearer" or not cred:
            problems.append(f"{where}: endpoint {i} must send a Bearer token from a Secret (authorization.credentials)")
        else:
            problems += _reference(f"{where} endpoint {i}", "Secret", cred.get("name"), secrets, {}, False, key=cred.get("key"))
    _raise_if(problems)


def check_all(resources: list[Resource], external: dict[str, set[str]] | None = None) -> None:
    """Every resource of a render, by its kind."""
    for obj in resources:
        if obj.get("kind") in CRD_FILES:
            check_custom_resource(obj)
            check_ray_pods(obj, resources, external)
            if obj["kind"] == "RayService":
                serve_config(obj)
        elif obj.get("kind") == "PodMonitor":
            check_podmonitor(obj, resources)
        elif is_builtin(obj):
            check_builtin(obj, resources, external)
        else:
            raise ManifestError([f"{resource_id(obj)}: no checks for this kind"])


def mutated(obj: Resource, path: str | tuple[str, ...], value: Any) -> Resource:
    """A deep copy with one field set; for tests that show a check refuses a wrong field.
    The path is dotted (list indices as numbers), or a tuple when a key holds dots."""
    out = copy.deepcopy(obj)
    node: Any = out
    parts = path.split(".") if isinstance(path, str) else list(path)
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out
