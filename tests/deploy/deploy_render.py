"""A small kustomize: renders deploy/kuberay's kustomizations in plain Python.

The tests must run where no `kustomize` or `kubectl` is installed, so this renders the subset
of kustomize that the manifests use, and refuses everything else by name rather than
rendering it differently. Where `kubectl` is installed, the tests compare its output with this
one's (test_render.py), so the two cannot drift apart unnoticed.

Supported: `resources` (files and kustomization folders), `configMapGenerator` and
`secretGenerator` (files, literals, envs; behavior create/replace/merge; names without hash
suffix), `images`, and `patches` given by `path` or inline `patch`: JSON 6902 operations
(add/replace/remove, with a `target`) or strategic-merge patches. A strategic merge replaces
lists whole, as kustomize does for custom resources; for built-in kinds kustomize merges some
lists by key instead, so a list in a patch of a built-in kind is refused.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "configMapGenerator", "secretGenerator", "images", "patches"}
GENERATOR_FIELDS = {"name", "behavior", "files", "literals", "envs", "options", "type"}
GENERATOR_OPTIONS = {"disableNameSuffixHash", "labels", "annotations"}
PATCH_FIELDS = {"path", "patch", "target"}
TARGET_FIELDS = {"group", "version", "kind", "name"}

Resource = dict[str, Any]


class RenderError(ValueError):
    """A kustomization this renderer cannot render exactly as kustomize would."""


def load_documents(text: str) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def resource_id(obj: Resource) -> tuple[str, str, str]:
    return obj.get("apiVersion", ""), obj.get("kind", ""), obj.get("metadata", {}).get("name", "")


def render(folder: str | Path) -> list[Resource]:
    """The resources that `kustomize build folder` emits (in an order of its own)."""
    folder = Path(folder)
    kfile = next((folder / name for name in KUSTOMIZATION_FILES if (folder / name).is_file()), None)
    if kfile is None:
        raise RenderError(f"{folder}: no kustomization.yaml")
    spec = yaml.safe_load(kfile.read_text()) or {}
    if unknown := set(spec) - SUPPORTED_FIELDS:
        raise RenderError(f"{kfile}: unsupported fields {sorted(unknown)}")

    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        if path.is_dir():
            resources.extend(render(path))
        elif path.is_file():
            resources.extend(load_documents(path.read_text()))
        else:
            raise RenderError(f"{kfile}: resource {entry!r} does not exist")
    for kind, field in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for generator in spec.get(field, []):
            _generate(resources, kind, generator, folder, kfile)
    for entry in spec.get("patches", []):
        resources = _patch(resources, entry, folder, kfile)
    for image in spec.get("images", []):  # after the patches, as in kustomize
        for obj in resources:
            _set_images(obj, image)
    _check_unique(resources, kfile)
    return resources


def _check_unique(resources: list[Resource], where: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for obj in resources:
        rid = resource_id(obj)
        if rid in seen:
            raise RenderError(f"{where}: resource {rid} appears twice")
        seen.add(rid)


# -- generators ---------------------------------------------------------------------------------
def _split_pair(text: str, where: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise RenderError(f"{where}: expected KEY=VALUE, got {text!r}")
    return key, value


def _generated_data(generator: dict[str, Any], folder: Path, where: str) -> dict[str, str]:
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, sep, rel = entry.partition("=")
        if not sep:
            key, rel = Path(entry).name, entry
        data[key] = (folder / rel).read_text()
    for literal in generator.get("literals", []):
        key, value = _split_pair(literal, where)
        data[key] = value
    for env_file in generator.get("envs", []):
        for line in (folder / env_file).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, value = _split_pair(line.strip(), f"{where} {env_file}")
                data[key] = value
    return data


def _generate(resources: list[Resource], kind: str, generator: dict[str, Any], folder: Path, kfile: Path) -> None:
    where = f"{kfile}: {kind} generator {generator.get('name')!r}"
    if unknown := set(generator) - GENERATOR_FIELDS:
        raise RenderError(f"{where}: unsupported fields {sorted(unknown)}")
    options = generator.get("options", {})
    if unknown := set(options) - GENERATOR_OPTIONS:
        raise RenderError(f"{where}: unsupported options {sorted(unknown)}")
    if options.get("disableNameSuffixHash") is not True:
        # A hashed name needs every reference to it rewritten, which kustomize does only in
        # the built-in kinds it knows (not in a RayService's pod templates).
        raise RenderError(f"{where}: set options.disableNameSuffixHash: true")
    data = _generated_data(generator, folder, where)
    if kind == "Secret":
        data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    behavior = generator.get("behavior", "create")
    existing = next((r for r in resources if r.get("kind") == kind and r["metadata"]["name"] == generator["name"]), None)
    if behavior == "create":
        if existing is not None:
            raise RenderError(f"{where}: already exists (use behavior: replace or merge)")
        obj: Resource = {"apiVersion": "v1", "kind": kind, "metadata": {"name": generator["name"]}, "data": data}
        if kind == "Secret":
            obj["type"] = generator.get("type", "Opaque")
        resources.append(obj)
        target = obj
    elif behavior in ("replace", "merge"):
        if existing is None:
            raise RenderError(f"{where}: behavior {behavior} needs an existing {kind}")
        if behavior == "replace":
            existing.pop("stringData", None)  # kustomize drops it too: `data` is the whole content
            existing["data"] = data
        else:
            existing["data"] = {**existing.get("data", {}), **data}
        target = existing
    else:
        raise RenderError(f"{where}: unknown behavior {behavior!r}")
    for field in ("labels", "annotations"):
        if options.get(field):
            target["metadata"].setdefault(field, {}).update(options[field])


# -- images -------------------------------------------------------------------------------------
def _image_name(image: str) -> str:
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def _set_images(node: Any, rule: dict[str, Any]) -> None:
    """kustomize's images transformer: every `containers`/`initContainers` list, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    image = container.get("image")
                    if isinstance(image, str) and _image_name(image) == rule["name"]:
                        container["image"] = _new_image(image, rule)
            _set_images(value, rule)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, rule)


def _new_image(image: str, rule: dict[str, Any]) -> str:
    name = rule.get("newName", _image_name(image))
    if "digest" in rule:
        return f"{name}@{rule['digest']}"
    tag = rule.get("newTag")
    if tag is None:
        rest = image[len(_image_name(image)):]
        return name + rest
    return f"{name}:{tag}"


# -- patches ------------------------------------------------------------------------------------
def _matches(obj: Resource, target: dict[str, Any]) -> bool:
    api = obj.get("apiVersion", "")
    group, _, version = api.rpartition("/")
    return (
        target.get("kind", obj.get("kind")) == obj.get("kind")
        and target.get("name", obj["metadata"].get("name")) == obj["metadata"].get("name")
        and target.get("group", group) == group
        and target.get("version", version) == version
    )


def _patch(resources: list[Resource], entry: dict[str, Any], folder: Path, kfile: Path) -> list[Resource]:
    if unknown := set(entry) - PATCH_FIELDS:
        raise RenderError(f"{kfile}: patch with unsupported fields {sorted(unknown)}")
    if ("path" in entry) == ("patch" in entry):
        raise RenderError(f"{kfile}: a patch needs exactly one of path or patch")
    target = entry.get("target")
    if target is not None and (unknown := set(target) - TARGET_FIELDS):
        raise RenderError(f"{kfile}: patch target with unsupported fields {sorted(unknown)}")
    where = f"{kfile}: patch {entry.get('path', '(inline)')}"
    text = (folder / entry["path"]).read_text() if "path" in entry else entry["patch"]
    docs = load_documents(text)
    if len(docs) == 1 and isinstance(docs[0], list):
        if target is None:
            raise RenderError(f"{where}: JSON 6902 operations need a target")
        matched = [obj for obj in resources if _matches(obj, target)]
        if not matched:
            raise RenderError(f"{where}: no resource matches the target {target}")
        for obj in matched:
            apply_json6902(obj, docs[0], where)
        return resources
    if len(docs) != 1:
        raise RenderError(f"{where}: one strategic-merge patch per file or entry")
    patch = docs[0]
    selector = target or {
        "kind": patch.get("kind"),
        "name": patch.get("metadata", {}).get("name"),
        **dict(zip(("group", "version"), _group_version(patch.get("apiVersion", "")))),
    }
    matched = [obj for obj in resources if _matches(obj, selector)]
    if not matched:
        raise RenderError(f"{where}: no resource matches {selector}")
    if patch.get("$patch") == "delete":
        return [obj for obj in resources if not any(obj is m for m in matched)]
    for obj in matched:
        if is_builtin(obj) and _has_list(patch):
            raise RenderError(f"{where}: lists in a patch of built-in kind {obj['kind']} merge by key in kustomize")
        body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
        merged = strategic_merge(obj, body)
        obj.clear()
        obj.update(merged)
    return resources


def _group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def is_builtin(obj: Resource) -> bool:
    group, _ = _group_version(obj.get("apiVersion", ""))
    return group == "" or "." not in group or group.endswith(".k8s.io")


def _has_list(node: Any) -> bool:
    if isinstance(node, list):
        return True
    return isinstance(node, dict) and any(_has_list(v) for v in node.values())


def strategic_merge(base: Any, patch: Any) -> Any:
    """Maps merge key by key (a null deletes the key); anything else, lists too, is replaced."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif key in out:
            out[key] = strategic_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _pointer(path: str, where: str) -> list[str]:
    if not path.startswith("/"):
        raise RenderError(f"{where}: JSON pointer {path!r} must start with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list, token: str, where: str, *, append_ok: bool) -> int:
    if token == "-" and append_ok:
        return len(container)
    if not token.isdigit() or int(token) > len(container) - (0 if append_ok else 1):
        raise RenderError(f"{where}: list index {token!r} out of range (length {len(container)})")
    return int(token)


def apply_json6902(obj: Resource, operations: list[dict[str, Any]], where: str) -> None:
    """RFC 6902 add, replace and remove on one resource, in order."""
    for op in operations:
        kind = op.get("op")
        if kind not in ("add", "replace", "remove"):
            raise RenderError(f"{where}: unsupported operation {kind!r}")
        tokens = _pointer(op.get("path", ""), where)
        parent: Any = obj
        for token in tokens[:-1]:
            try:
                parent = parent[_index(parent, token, where, append_ok=False)] if isinstance(parent, list) else parent[token]
            except (KeyError, TypeError):
                raise RenderError(f"{where}: {op['path']} does not exist") from None
        last = tokens[-1]
        if isinstance(parent, list):
            i = _index(parent, last, where, append_ok=kind == "add")
            if kind == "add":
                parent.insert(i, copy.deepcopy(op["value"]))
            elif kind == "replace":
                parent[i] = copy.deepcopy(op["value"])
            else:
                del parent[i]
        elif isinstance(parent, dict):
            if kind != "add" and last not in parent:
                raise RenderError(f"{where}: {op['path']} does not exist")
            if kind == "remove":
                del parent[last]
            else:
                parent[last] = copy.deepcopy(op["value"])
        else:
            raise RenderError(f"{where}: {op['path']} does not lead into a map or a list")
