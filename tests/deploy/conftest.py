"""Fixtures of the manifest tests."""

from __future__ import annotations

import pytest

from deploy_checks import CRD_FILES, KUBERAY_CRDS


@pytest.fixture(scope="session")
def crds() -> None:
    """KubeRay's CRD schemas travel with the tests (tests/deploy/kuberay_crds): a missing one
    is a broken checkout, so it fails rather than skips."""
    missing = [name for name in CRD_FILES.values() if not (KUBERAY_CRDS / name).is_file()]
    if missing:
        pytest.fail(f"KubeRay's CRDs are missing from {KUBERAY_CRDS}: {missing}")
