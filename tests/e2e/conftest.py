"""Fixtures for the end-to-end tier: a real cluster with KubeRay and the chart installed.

Opt-in: everything here is skipped unless BIGMODEL_TEST_CLUSTER=existing, and `make test` never collects
tests/e2e (pyproject's testpaths are tests/unit and tests/integration). tests/e2e/node.sh (`make e2e`,
a real node in a private network namespace) and tests/e2e/kind.sh (`make e2e-kind`) set it up.
KUBECONFIG picks the cluster; kubectl comes from BIGMODEL_KUBECTL or PATH. When a test fails, the pods,
events and logs of its namespace, the operator's and KubeRay's are printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

OPERATOR_NAMESPACES = ("bigmodel-system", "kuberay-system")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    skip = pytest.mark.skip(reason="end-to-end: needs a real cluster (BIGMODEL_TEST_CLUSTER=existing; make e2e)")
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.e2e)
            if os.environ.get("BIGMODEL_TEST_CLUSTER") != "existing":
                item.add_marker(skip)


class Kubectl:
    """kubectl(*args, input=None, check=True, timeout=120) against $KUBECONFIG."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def __call__(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> Any:
        proc = subprocess.run(
            [self.binary, *args], input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
        return proc


@pytest.fixture(scope="session")
def kubectl() -> Kubectl:
    binary = os.environ.get("BIGMODEL_KUBECTL") or shutil.which("kubectl")
    if binary is None:
        pytest.fail("kubectl is not on PATH (or set BIGMODEL_KUBECTL)")
    return Kubectl(binary)


class Steps:
    """`with steps("what"):` prints each step's duration; the names and times are kept for the summary."""

    def __init__(self) -> None:
        self.done: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        print(f"\n-- {what}", flush=True)
        start = time.monotonic()
        try:
            yield
        except BaseException:
            print(f"-- FAILED after {time.monotonic() - start:.1f}s: {what}", flush=True)
            raise
        took = time.monotonic() - start
        self.done.append((what, took))
        print(f"-- {took:.1f}s: {what}", flush=True)


@pytest.fixture
def steps() -> Iterator[Steps]:
    recorder = Steps()
    yield recorder
    if recorder.done:
        print("\nstep durations:\n" + "\n".join(f"  {took:7.1f}s  {what}" for what, took in recorder.done))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED] = True
    return report


FAILED = pytest.StashKey[bool]()


def dump(kubectl: Kubectl, namespace: str) -> None:
    """Pods, events and container logs of the test's namespace and the operators'."""
    print(f"\n===== cluster state after the failure (namespace {namespace}) =====")
    for args in (
        ("get", "nodes,pods", "-A", "-o", "wide"),
        ("get", "rayservices,rayclusters,bigmodels,finetunejobs,jobs,pvc", "-n", namespace, "-o", "wide"),
    ):
        print(kubectl(*args, check=False).stdout)
    print(kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False).stdout[-12000:])
    for ns in (namespace, *OPERATOR_NAMESPACES):
        pods = json.loads(kubectl("get", "pods", "-n", ns, "-o", "json", check=False).stdout or '{"items": []}')
        for pod in pods["items"]:
            name = pod["metadata"]["name"]
            for container in pod["spec"]["containers"]:
                logs = kubectl("logs", "-n", ns, name, "-c", container["name"], "--tail=80", check=False)
                print(f"----- logs {ns}/{name}/{container['name']}\n{logs.stdout}{logs.stderr}")
    if os.environ.get("BIGMODEL_E2E_RAY_LOGS", "1") == "1":
        for pod in json.loads(
            kubectl("get", "pods", "-n", namespace, "-l", "ray.io/node-type=head", "-o", "json", check=False).stdout
            or '{"items": []}'
        )["items"]:
            out = kubectl(
                "exec",
                "-n",
                namespace,
                pod["metadata"]["name"],
                "--",
                "bash",
                "-c",
                "tail -n 60 /tmp/ray/session_latest/logs/serve/*.log",
                check=False,
            )
            print(f"----- Serve logs in {pod['metadata']['name']}\n{out.stdout[-8000:]}{out.stderr}")


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace; deleted afterwards unless BIGMODEL_E2E_KEEP=1 or the test failed (then dumped)."""
    name = f"e2e-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    deadline = time.monotonic() + 60
    while kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"namespace {name} got no default ServiceAccount"
        time.sleep(1)
    yield name
    failed = request.node.stash.get(FAILED, False)
    if failed:
        dump(kubectl, name)
    if os.environ.get("BIGMODEL_E2E_KEEP") != "1" and not failed:
        kubectl("delete", "namespace", name, "--wait=false")
