"""The data Pavana carries: found as package data (or in PAVANA_DATA_DIR), each source with its
licence and attribution beside it, installed with the package, and nothing read from outside."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import pavana_data
from pavana_data import DataMissing, data_path, profiles_dir, trace_path
from simulator.cost_model import GpuCostModel, Network
from simulator.workload import azure_trace

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("traces", "profiles")


def test_traces_and_profiles_are_found_inside_the_package():
    package = Path(pavana_data.__file__).parent
    assert trace_path("conv").parent == package / "traces"
    assert profiles_dir() == package / "profiles"
    assert len(azure_trace("conv")) == 19_366 and len(azure_trace("code")) == 8_819
    assert GpuCostModel.from_profiles("h100", "llama2-7b").tp == 1
    assert Network.from_profile("a100").within_site_bytes_per_s > 0


@pytest.mark.parametrize("source", SOURCES)
def test_each_source_carries_its_licence_and_attribution(source):
    folder = Path(pavana_data.__file__).parent / source
    readme = (folder / "README.md").read_text()
    licence = (folder / "LICENSE").read_text()
    assert re.search(r"^## Source$", readme, re.M) and re.search(r"^## Licence$", readme, re.M)
    assert {"traces": "Attribution 4.0 International", "profiles": "MIT License"}[source] in licence
    assert "github.com" in readme  # where it was taken from


def test_kuberay_crds_for_the_manifest_tests_carry_their_licence():
    folder = REPO / "tests" / "deploy" / "kuberay_crds"
    assert "Apache License" in (folder / "LICENSE").read_text()
    assert "feeaf72facab4881ba2b179248bb67315634e229" in (folder / "README.md").read_text()


def test_pavana_data_dir_replaces_the_package_folder(tmp_path, monkeypatch):
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "AzureLLMInferenceTrace_conv.csv").write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,10,5\n2023-11-16 18:15:47.6805900,20,6\n")
    monkeypatch.setenv("PAVANA_DATA_DIR", str(tmp_path))
    assert [(r.prompt_tokens, r.output_tokens) for r in azure_trace("conv")] == [(10, 5), (20, 6)]
    with pytest.raises(DataMissing, match="PAVANA_DATA_DIR=.*profiles"):
        GpuCostModel.from_profiles("a100", "llama2-7b")


def test_a_missing_file_names_where_it_was_looked_for():
    with pytest.raises(DataMissing, match="no traces/absent.csv in the pavana_data package"):
        data_path("traces", "absent.csv")


def test_no_code_reads_data_from_beside_the_repository():
    """Only the GEFCom2012 lookup (not carried: no open licence) may name the shared folder,
    and it looks from the working directory, never from a source file's location."""
    offenders = []
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO)
        if rel.parts[0] in (".venv", "build") or rel in (Path("pavana_data/__init__.py"), Path(__file__).relative_to(REPO)):
            continue
        text = path.read_text()
        if re.search(r'parents\[\d\] / "shared"|parents\[[3-9]\]|Path\("/work|REPO\.parent|"shared" / "data"|Path\("\.\./shared', text):
            offenders.append(str(rel))
    assert offenders == []


@pytest.mark.slow
def test_the_wheel_installs_the_data(tmp_path):
    """`pip install .` (the image, a user's install) puts the data beside the code."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "pavana_data", source / "pavana_data", ignore=shutil.ignore_patterns("__pycache__"))
    # The other packages hold no data; an empty package each is enough to build.
    for package in ("cluster", "workers", "router", "autoscaler", "controller", "simulator", "bench", "benchmarks"):
        (source / package).mkdir()
        (source / package / "__init__.py").write_text("")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("pavana-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = Path(pavana_data.__file__).parent
    expected = {str(p.relative_to(package.parent)) for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert expected <= names, sorted(expected - names)
