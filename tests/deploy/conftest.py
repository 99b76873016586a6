"""Fixtures of the manifest tests."""

from __future__ import annotations

import pytest

from deploy_checks import SHARED_KUBERAY


@pytest.fixture(scope="session")
def crds() -> None:
    """KubeRay's CRD schemas live in the shared data beside the repository."""
    if not SHARED_KUBERAY.is_dir():
        pytest.skip(f"KubeRay's CRDs are not beside the repository: {SHARED_KUBERAY}")
