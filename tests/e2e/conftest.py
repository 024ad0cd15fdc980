"""Fixtures for the end-to-end tier: a real cluster with KubeRay and the chart installed (tests/e2e/kind.sh).

Opt-in: everything here is skipped unless BIGMODEL_TEST_CLUSTER=existing, and `make test` never collects
tests/e2e (pyproject's testpaths are tests/unit and tests/integration). KUBECONFIG picks the cluster;
kubectl comes from PATH (or BIGMODEL_KUBECTL).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    skip = pytest.mark.skip(reason="end-to-end: needs a real cluster (BIGMODEL_TEST_CLUSTER=existing; make e2e-kind)")
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.e2e)
            if os.environ.get("BIGMODEL_TEST_CLUSTER") != "existing":
                item.add_marker(skip)


@pytest.fixture(scope="session")
def kubectl() -> Callable[..., subprocess.CompletedProcess[str]]:
    """kubectl(*args, input=None, check=True, timeout=120) against $KUBECONFIG."""
    binary = os.environ.get("BIGMODEL_KUBECTL") or shutil.which("kubectl")
    if binary is None:
        pytest.fail("kubectl is not on PATH (or set BIGMODEL_KUBECTL)")

    def run(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> Any:
        proc = subprocess.run(
            [binary, *args], input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
        return proc

    return run


@pytest.fixture
def namespace(kubectl: Callable[..., Any]) -> Iterator[str]:
    """A fresh namespace; deleted afterwards unless BIGMODEL_E2E_KEEP=1 (to look around after a failure)."""
    name = f"e2e-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    deadline = time.monotonic() + 60
    while kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"namespace {name} got no default ServiceAccount"
        time.sleep(1)
    yield name
    if os.environ.get("BIGMODEL_E2E_KEEP") != "1":
        kubectl("delete", "namespace", name, "--wait=false")
