"""Fixtures for tests against a real Kubernetes control plane.

By default the session starts (or reuses) the project's test control plane with
``tests/cluster/devcluster.py up``. With ``BIGMODEL_TEST_CLUSTER=existing`` it uses whatever
``KUBECONFIG`` points at and starts nothing. Every test under tests/integration/ gets the
``integration`` marker.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLUSTER_DIR = REPO / "tests" / "cluster"
DEVCLUSTER = CLUSTER_DIR / "devcluster.py"
T = TypeVar("T")


def _existing() -> bool:
    return os.environ.get("BIGMODEL_TEST_CLUSTER", "") == "existing"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs a Kubernetes API server (tests/cluster/devcluster.py)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _run_visible(config: pytest.Config, argv: list[str]) -> int:
    """Run with pytest's output capture suspended, so a long build shows its progress."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        return subprocess.run(argv, check=False).returncode
    with capman.global_and_fixture_disabled():
        sys.stdout.write("\n")
        return subprocess.run(argv, check=False).returncode


def pytest_collection_finish(session: pytest.Session) -> None:
    # The first build compiles Kubernetes from source (minutes). Doing it here, before any
    # test starts, keeps it out of per-test timeouts; `up` in the fixture is then quick.
    if _existing() or session.config.option.collectonly:
        return
    wanted = any("cluster" in getattr(item, "fixturenames", ()) for item in session.items)
    if wanted and _run_visible(session.config, [sys.executable, str(DEVCLUSTER), "build"]) != 0:
        raise pytest.UsageError("building the test control plane failed (see above)")


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    kubectl_bin: str
    managed: bool  # True when started by devcluster.py, False for BIGMODEL_TEST_CLUSTER=existing


def _built_kubectl() -> str | None:
    sys.path.insert(0, str(CLUSTER_DIR))
    try:
        import clusterbuild
    finally:
        sys.path.remove(str(CLUSTER_DIR))
    path = clusterbuild.Layout.current().binaries()["kubectl"]
    return str(path) if path.exists() else None


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config) -> Cluster:
    if _existing():
        kubeconfig = os.environ.get("KUBECONFIG")
        if not kubeconfig:
            pytest.fail("BIGMODEL_TEST_CLUSTER=existing needs KUBECONFIG to be set")
        kubectl_bin = _built_kubectl() or shutil.which("kubectl")
        if kubectl_bin is None:
            pytest.fail("no kubectl: run `make cluster-build` or put kubectl on PATH")
        return Cluster(Path(kubeconfig.split(os.pathsep)[0]), kubectl_bin, managed=False)
    if _run_visible(pytestconfig, [sys.executable, str(DEVCLUSTER), "up"]) != 0:
        pytest.fail("`tests/cluster/devcluster.py up` failed (output above, logs in .cluster/logs/)")
    kubectl_bin = _built_kubectl()
    assert kubectl_bin is not None
    return Cluster(REPO / ".cluster" / "kubeconfig", kubectl_bin, managed=True)


@pytest.fixture(scope="session")
def kubeconfig(cluster: Cluster) -> Path:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> Iterator[Any]:
    """A kubernetes.client.ApiClient authenticated as cluster admin."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(kubeconfig))
    yield client
    client.close()


@pytest.fixture(scope="session")
def kubectl(cluster: Cluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    """kubectl(*args, input=None, check=True, timeout=120) -> CompletedProcess (text)."""
    cache = cluster.kubeconfig.parent / "kube-cache"  # beside its cluster's kubeconfig: two clusters, two caches

    def run(
        *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = [cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", f"--cache-dir={cache}", *args]
        proc = subprocess.run(argv, check=False, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
        return proc

    return run


@pytest.fixture(scope="session")
def wait_until() -> Callable[..., Any]:
    """wait_until(fn, timeout=60, interval=0.2, what=...) -> fn()'s first truthy result."""

    def wait(fn: Callable[[], T], timeout: float = 60, interval: float = 0.2, what: str | None = None) -> T:
        deadline = time.monotonic() + timeout
        while True:
            result = fn()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or fn}; last: {result!r}")
            time.sleep(interval)

    return wait


def _namespace_name(test_name: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"it-{stem}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(request: pytest.FixtureRequest, api_client: Any, wait_until: Callable[..., Any]) -> Iterator[str]:
    """A fresh namespace for one test; deleted afterwards without waiting for it to go."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api_client)
    name = _namespace_name(request.node.name)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"bigmodel.io/test": "integration"}))
    )

    def default_sa() -> bool:
        # Pods are refused until the controller-manager has created the namespace's
        # `default` ServiceAccount.
        try:
            core.read_namespaced_service_account("default", name)
            return True
        except ApiException as err:
            if err.status != 404:
                raise
            return False

    wait_until(default_sa, timeout=60, what=f"ServiceAccount {name}/default")
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as err:
        if err.status != 404:
            raise
