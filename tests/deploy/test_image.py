"""The container image: Python 3.11 slim, torch's CPU build pinned, non-root with the ids the
pods run as, the tags the manifests name, and a build context that holds what it copies."""

from __future__ import annotations

import fnmatch
import re
import tomllib

import pytest

from deploy_fixtures import KUBERAY, OVERLAYS, REPO, rendered
from deploy_render import Resource

DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"  # the build context is the repository root


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def build_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for kind, arg in instructions() if kind == "ARG" and "=" in arg)


def copies() -> list[tuple[str, str]]:
    """(source, destination) of every file or folder a COPY takes from the build context."""
    pairs = []
    for kind, args in instructions():
        if kind == "COPY":
            *sources, dest = args.split()
            pairs += [(src, dest) for src in sources if not src.startswith("--")]
    return pairs


def included(path: str) -> bool:
    """Whether `path` reaches the build context: the last .dockerignore pattern that matches
    it, or a folder above it, decides."""
    keep = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        patterns = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in patterns):
            keep = negate
    return keep


def test_python_311_slim_with_torchs_cpu_build():
    args = build_args()
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"])
    assert ("FROM", "${PYTHON_IMAGE}") in instructions()
    assert args["TORCH_VERSION"] == "2.13.0" and args["VARIANT"] == "cpu"
    assert args["TORCH_CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"
    runs = " ".join(a for k, a in instructions() if k == "RUN")
    assert 'pip install "torch==${TORCH_VERSION}" --index-url "${index}"' in runs
    # torch before Pavana, so `pip install .` keeps the CPU build
    assert runs.index("torch==") < runs.index("pip install .")


def pod_ids(resources: list[Resource]) -> set[tuple[int, int]]:
    rayservice = next(r for r in resources if r["kind"] == "RayService")
    cluster = rayservice["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    return {(t["spec"]["securityContext"]["runAsUser"], t["spec"]["securityContext"]["runAsGroup"]) for t in templates}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runs_as_the_non_root_user_the_pods_ask_for(overlay):
    users = [a for k, a in instructions() if k == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    uid, gid = (int(x) for x in users[-1].split(":"))
    assert uid != 0
    assert pod_ids(rendered(f"overlays/{overlay}")) == {(uid, gid)}
    assert f"--uid {uid} --gid {gid}" in " ".join(a for k, a in instructions() if k == "RUN")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_manifests_name_tags_the_build_commands_make(overlay):
    documented = set(re.findall(r"-t (pavana:\S+)", DOCKERFILE.read_text()))
    images = set()
    for obj in rendered(f"overlays/{overlay}"):
        images |= set(re.findall(r"'image': '(pavana:[^']+)'", str(obj)))
    assert images and images <= documented


def test_copies_every_package_and_the_keeper():
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {src for src, _ in copies()}
    assert {p.rstrip("*") for p in packages} <= copied
    sidecar_script = "/opt/pavana/bin/keep_reconciler.py"
    assert ("deploy/kuberay/reconciler/keep_reconciler.py", sidecar_script) in copies()
    assert sidecar_script in (KUBERAY / "base" / "rayservice.yaml").read_text()


def test_the_image_carries_the_data_and_its_licences():
    """The image is built from the repository alone: the data package goes in whole (its
    files are package data, so `pip install .` installs them), and nothing from beside it."""
    assert ("pavana_data", "pavana_data") in copies()
    data_files = [str(p.relative_to(REPO)) for p in (REPO / "pavana_data").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert any(f.endswith(".csv") for f in data_files) and any(f.endswith("LICENSE") for f in data_files)
    for path in data_files:
        assert included(path), f"{path} is data the image needs but .dockerignore leaves it out"
    assert not any(".." in src or src.startswith("/") for src, _ in copies())


def test_the_build_context_holds_what_the_image_copies():
    for src, _ in copies():
        for path in ([src] if (REPO / src).is_file() else [str(p.relative_to(REPO)) for p in (REPO / src).rglob("*.py")][:50]):
            assert included(path), f"{path} is copied but .dockerignore leaves it out"


@pytest.mark.parametrize("path", [".venv/bin/python", "tests/conftest.py", "cluster/__pycache__/spec.cpython-311.pyc", "benchmarks/results/engine.json", "deploy/specs/default.yaml", ".git/HEAD"])
def test_the_build_context_leaves_out_the_rest(path):
    assert not included(path)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ray_container_runs_one_image_with_the_pinned_ray(overlay):
    rayservice = next(r for r in rendered(f"overlays/{overlay}") if r["kind"] == "RayService")
    cluster = rayservice["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    # Ray refuses nodes of another Ray version, and the driver in the keeper is one too
    assert len({c["image"] for t in templates for c in t["spec"]["containers"]}) == 1
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_pin,) = [d for d in deps if d.startswith("ray[")]
    assert ray_pin.split("==")[1] == cluster["rayVersion"]
