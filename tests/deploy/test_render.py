"""The small kustomize renders what kustomize renders, and refuses what it cannot render so."""

from __future__ import annotations

import base64
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from deploy_fixtures import KUBERAY, OVERLAYS, REPO
from deploy_render import RenderError, apply_json6902, render, resource_id, strategic_merge

FOLDERS = [KUBERAY / "base", *(KUBERAY / "overlays" / o for o in OVERLAYS), KUBERAY / "monitoring", REPO / "deploy" / "grafana"]


def _kustomize_binary() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: str(p.relative_to(REPO)))
def test_renders_as_kustomize_does(folder: Path):
    command = _kustomize_binary()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    out = subprocess.run([*command, str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs = {resource_id(r): r for r in yaml.safe_load_all(out.stdout) if r}
    ours = {resource_id(r): r for r in render(folder)}
    assert ours.keys() == theirs.keys()
    for rid in ours:
        assert ours[rid] == theirs[rid], f"{rid} differs from kustomize's"


def _write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text))
    return folder


DEPLOYMENT = """\
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      template:
        spec:
          containers: [{name: app, image: "registry.example/app:1.0"}, {name: side, image: "busybox:1"}]
    """


def test_generators_replace_and_merge_an_inherited_object(tmp_path):
    _write(tmp_path / "base", {
        "kustomization.yaml": """\
            resources: [secret.yaml]
            configMapGenerator:
              - {name: conf, files: [spec.yaml], options: {disableNameSuffixHash: true}}
            """,
        "secret.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {name: keys}\nstringData: {a: placeholder}\n",
        "spec.yaml": "x: 1\n",
    })
    _write(tmp_path / "over", {
        "kustomization.yaml": """\
            resources: [../base]
            secretGenerator:
              - {name: keys, behavior: replace, literals: [a=secret=with=equals], options: {disableNameSuffixHash: true}}
            configMapGenerator:
              - {name: conf, behavior: merge, envs: [extra.env], options: {disableNameSuffixHash: true, labels: {tier: x}}}
            """,
        "extra.env": "# a comment\nmode=fast\n",
    })
    out = {r["kind"]: r for r in render(tmp_path / "over")}
    assert "stringData" not in out["Secret"]
    assert base64.b64decode(out["Secret"]["data"]["a"]).decode() == "secret=with=equals"
    assert out["ConfigMap"]["data"] == {"spec.yaml": "x: 1\n", "mode": "fast"}
    assert out["ConfigMap"]["metadata"]["labels"] == {"tier": "x"}


def test_images_and_json6902_patches(tmp_path):
    _write(tmp_path, {
        "kustomization.yaml": """\
            resources: [web.yaml]
            images: [{name: registry.example/app, newTag: "2.0"}]
            patches:
              - target: {kind: Deployment, name: web}
                patch: |-
                  - {op: add, path: /spec/template/spec/containers/-, value: {name: third, image: "registry.example/app:1.0"}}
                  - {op: replace, path: /spec/template/spec/containers/1/image, value: "busybox:2"}
                  - {op: add, path: /metadata/labels, value: {a~b/c: "1"}}
            """,
        "web.yaml": DEPLOYMENT,
    })
    (web,) = render(tmp_path)
    images = [c["image"] for c in web["spec"]["template"]["spec"]["containers"]]
    # images apply after patches: the added container is retagged too
    assert images == ["registry.example/app:2.0", "busybox:2", "registry.example/app:2.0"]
    assert web["metadata"]["labels"] == {"a~b/c": "1"}


def test_strategic_merge_merges_maps_replaces_lists_and_deletes():
    base = {"spec": {"a": {"x": 1, "y": 2}, "items": [1, 2, 3], "gone": True}}
    merged = strategic_merge(base, {"spec": {"a": {"y": 3}, "items": [9], "gone": None}})
    assert merged == {"spec": {"a": {"x": 1, "y": 3}, "items": [9]}}
    assert base["spec"]["items"] == [1, 2, 3]  # the input is left alone


def test_delete_patch_removes_the_resource(tmp_path):
    _write(tmp_path, {
        "kustomization.yaml": "resources: [web.yaml]\npatches:\n  - patch: |-\n      $patch: delete\n      apiVersion: apps/v1\n      kind: Deployment\n      metadata: {name: web}\n",
        "web.yaml": DEPLOYMENT,
    })
    assert render(tmp_path) == []


@pytest.mark.parametrize(
    "kustomization, message",
    [
        ("resources: [web.yaml]\nnamePrefix: x-\n", "unsupported fields ['namePrefix']"),
        ("resources: [missing.yaml]\n", "does not exist"),
        ("resources: [web.yaml]\nconfigMapGenerator:\n  - {name: c, literals: [a=b]}\n", "disableNameSuffixHash"),
        ("resources: [web.yaml]\nconfigMapGenerator:\n  - {name: c, behavior: replace, literals: [a=b], options: {disableNameSuffixHash: true}}\n", "needs an existing ConfigMap"),
        ("resources: [web.yaml, web.yaml]\n", "appears twice"),
        # kustomize merges containers by name in a Deployment; a replacing merge would differ
        ("resources: [web.yaml]\npatches:\n  - patch: |-\n      apiVersion: apps/v1\n      kind: Deployment\n      metadata: {name: web}\n      spec: {template: {spec: {containers: [{name: app, image: x}]}}}\n", "merge by key"),
        ("resources: [web.yaml]\npatches:\n  - patch: |-\n      - {op: replace, path: /spec/replicas, value: 2}\n", "need a target"),
        ("resources: [web.yaml]\npatches:\n  - target: {kind: Deployment}\n    patch: |-\n      - {op: replace, path: /spec/replicas, value: 2}\n", "does not exist"),
        ("resources: [web.yaml]\npatches:\n  - target: {kind: Service}\n    patch: |-\n      - {op: remove, path: /spec}\n", "no resource matches"),
    ],
    ids=["field", "missing", "hash", "replace-nothing", "duplicate", "builtin-list", "no-target", "no-path", "no-match"],
)
def test_refuses_what_it_cannot_render_exactly(tmp_path, kustomization, message):
    _write(tmp_path, {"kustomization.yaml": kustomization, "web.yaml": DEPLOYMENT})
    with pytest.raises(RenderError, match=message.replace("[", r"\[").replace("]", r"\]")):
        render(tmp_path)


def test_json6902_index_out_of_range_is_refused():
    obj = {"spec": {"items": [1]}}
    with pytest.raises(RenderError, match="out of range"):
        apply_json6902(obj, [{"op": "replace", "path": "/spec/items/1", "value": 2}], "test")
    apply_json6902(obj, [{"op": "add", "path": "/spec/items/1", "value": 2}], "test")
    assert obj == {"spec": {"items": [1, 2]}}
