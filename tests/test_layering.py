"""The package table of DESIGN.md, checked: an arrow never runs back up it. Each top-level
package imports only the Pavana packages it may (its own always)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAVANA = {"cluster", "workers", "router", "autoscaler", "controller", "simulator", "bench", "benchmarks"}
ALLOWED = {
    "cluster": set(),
    "workers": {"cluster"},
    "router": {"cluster", "workers"},
    "autoscaler": {"cluster"},
    "simulator": {"cluster", "workers", "router", "autoscaler", "bench"},
    "bench": {"cluster"},
}
# What `simulator` may take from the packages above it: the engine's pure parts, the router's
# policies, and the one control round.
SIMULATOR_MAY_IMPORT = ("workers.engine.", "router.admission", "router.queue_wait", "router.site_router", "router.replica_choice", "router.errors",
                        "autoscaler.round", "cluster.", "bench.", "simulator.")


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_the_design_allows(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imports(path):
            top = name.split(".")[0]
            if top in PAVANA and top != package:
                assert top in ALLOWED[package], f"{path.relative_to(ROOT)} imports {name}"
            if package == "simulator" and top in PAVANA and top != "simulator":
                assert name.startswith(SIMULATOR_MAY_IMPORT) or name in ("autoscaler.round",), f"{path.relative_to(ROOT)} imports {name}"
