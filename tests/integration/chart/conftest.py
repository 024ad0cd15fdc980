"""Fixtures for the Helm chart tests: helm built from the Go module proxy, rendering, installing.

The shared test cluster's bigmodel.io CRDs belong to `devcluster.py up` (and to every other test
session using the cluster), so releases installed here set crds.install=false; the CRD install and
upgrade path is tested on a copy of the chart whose CRDs carry a per-test API group instead.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "bigmodel-operator"
sys.path.insert(0, str(REPO / "tests" / "cluster"))
import apirecorder  # noqa: E402
import chartidentity  # noqa: E402
import charttools  # noqa: E402

__all__ = ["CHART", "REPO", "apirecorder", "chartidentity", "charttools", "dump_all", "find"]


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """The helm binary (built on first use: about 3 minutes with an empty Go build cache)."""
    try:
        return str(charttools.build_helm())
    except SystemExit as error:  # no Go toolchain: nothing here can run
        pytest.skip(f"cannot build helm: {error}")


@pytest.fixture(scope="session")
def helm(helm_bin: str, kubeconfig: Path) -> Callable[..., Any]:
    """helm(*args, check=True) -> CompletedProcess, against the test cluster."""

    def run(*args: str, check: bool = True) -> Any:
        return chartidentity.helm(*args, kubeconfig=kubeconfig, check=check)

    return run


@pytest.fixture(scope="session")
def render(helm_bin: str) -> Callable[..., list[dict[str, Any]]]:
    """render(*helm_flags, release="t", namespace="bigmodel-system", chart=CHART) -> the documents."""

    def run(*values: str, release: str = "t", namespace: str = "bigmodel-system", chart: Path = CHART) -> list:
        out = chartidentity.helm("template", release, str(chart), f"--namespace={namespace}", *values).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    return run


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in matches]}"
    return matches[0]


@pytest.fixture
def release(request: pytest.FixtureRequest, helm: Callable[..., Any], namespace: str) -> Iterator[str]:
    """A release name for this test; whatever was installed under it is uninstalled afterwards."""
    name = f"t{secrets.token_hex(3)}"
    yield name
    helm("uninstall", name, f"--namespace={namespace}", "--wait=false", check=False)


@pytest.fixture
def other_namespace(api_client: Any, namespace: str) -> Iterator[str]:
    """A second fresh namespace (the `namespace` fixture's sibling)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    name = f"{namespace[:55]}-b"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def dump_all(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)
