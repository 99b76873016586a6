"""Renders of deploy/kuberay's kustomizations, shared by the manifest tests (each folder is
rendered once per session and handed out as a fresh copy, free to mutate)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

from deploy_render import Resource, render

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "deploy" / "kuberay"
OVERLAYS = ("cpu-local", "gpu", "two-sites", "external-redis")
# Objects an overlay names but that docs/kubernetes.md creates with kubectl, from data kept
# outside the repository (none now: the two-sites overlay runs on the built-in wind model).
EXTERNAL: dict[str, dict[str, set[str]]] = {}


@functools.cache
def _render(folder: str) -> tuple[Resource, ...]:
    return tuple(render(KUBERAY / folder))


def rendered(folder: str) -> list[Resource]:
    """A fresh copy of the render of `base`, `monitoring` or `overlays/<name>`."""
    return copy.deepcopy(list(_render(folder)))


def one(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    found = [r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
