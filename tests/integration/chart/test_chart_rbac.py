"""The chart's RBAC on the real apiserver: exactly the documented set, and nothing more.

That these permissions are also *enough* is proven by running the controller scenarios as the chart's
ServiceAccount: `BIGMODEL_OPERATOR_AS=chart pytest tests/integration/controller` (docs/operations.md).
RBAC cannot express "only RayServices this operator owns"; what the operator does instead (refuse to
touch a child it does not control) is tested in
tests/integration/controller/test_bigmodel.py::test_foreign_object_with_our_name_is_not_touched.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests import cluster_finetunejob

from .conftest import CHART, REPO, apirecorder, chartidentity

OPERATIONS = REPO / "docs" / "operations.md"
NO_CRDS = "--set=crds.install=false"
_ROW = re.compile(r"^(\S*)\s+(\[[^\]]*\])\s+(\[[^\]]*\])\s+(\[[^\]]*\])\s*$")


def documented_rules() -> list[tuple[str, str, str]]:
    """(kubectl resource name, verb, scope) from the RBAC table in docs/operations.md."""
    text = OPERATIONS.read_text()
    table = text.split("<!-- rbac:begin", 1)[1].split("-->", 1)[1].split("<!-- rbac:end -->", 1)[0]
    rules = []
    for line in table.strip().splitlines()[2:]:
        group, resources, verbs, scope = (cell.strip().strip("`") for cell in line.strip("|").split("|")[:4])
        for resource in resources.replace("`", "").split(", "):
            for verb in verbs.replace("`", "").split(", "):
                rules.append((kubectl_name(group, resource), verb, scope))
    return rules


def kubectl_name(group: str, resource: str) -> str:
    """How `kubectl auth can-i --list` names a resource: `jobs.batch`, `finetunejobs.bigmodel.io/status`."""
    plural, _, sub = resource.partition("/")
    name = plural if group in {"", "core"} else f"{plural}.{group}"
    return name + (f"/{sub}" if sub else "")


def expected(scope_filter: Callable[[str], bool]) -> set[tuple[str, str]]:
    return {(resource, verb) for resource, verb, scope in documented_rules() if scope_filter(scope)}


def can_i_list(kubectl: Callable[..., Any], user: str, namespace: str) -> set[tuple[str, str]]:
    """Resource rules of `kubectl auth can-i --list` for `user` in `namespace`, as (resource, verb)."""
    out = kubectl("auth", "can-i", "--list", f"--as={user}", f"--namespace={namespace}").stdout
    rules = set()
    for line in out.splitlines()[1:]:
        match = _ROW.match(line)
        if match and match[1]:
            names, verbs = match[3].strip("[]").split(), match[4].strip("[]").split()
            assert not names, f"resourceNames are not expected: {line}"
            rules |= {(match[1], verb) for verb in verbs}
    return rules


def _account(namespace: str, release: str) -> str:
    return f"system:serviceaccount:{namespace}:{release}-bigmodel-operator"


@pytest.fixture
def baseline(kubectl: Callable[..., Any], namespace: str) -> set[tuple[str, str]]:
    """What every authenticated account may do (self reviews and the like): subtracted below."""
    return can_i_list(kubectl, f"system:serviceaccount:{namespace}:default", namespace)


def test_can_i_list_is_the_documented_set(
    helm: Callable[..., Any], kubectl: Callable[..., Any], namespace: str, release: str, baseline: set
) -> None:
    helm("install", release, str(CHART), f"--namespace={namespace}", NO_CRDS)
    granted = can_i_list(kubectl, _account(namespace, release), namespace) - baseline
    assert granted == expected(lambda scope: "list only" not in scope)
    assert not [rule for rule in granted if "*" in rule[0] or rule[1] == "*"], "no wildcards"


def _ask(kubectl: Callable[..., Any], user: str, *args: str) -> bool:
    proc = kubectl("auth", "can-i", f"--as={user}", *args, check=False)
    return proc.stdout.strip() == "yes"


def test_namespace_list_mode_stays_in_its_namespaces(
    helm: Callable[..., Any],
    kubectl: Callable[..., Any],
    kubeconfig: Path,
    api_client: Any,
    namespace: str,
    other_namespace: str,
    release: str,
    baseline: set,
    tmp_path: Path,
) -> None:
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    helm("install", release, str(CHART), f"--namespace={namespace}", NO_CRDS, f"--set=watchNamespaces={{{namespace}}}")
    user = _account(namespace, release)
    assert can_i_list(kubectl, user, namespace) - baseline == expected(lambda scope: True)
    assert can_i_list(kubectl, user, other_namespace) - baseline == expected(lambda scope: scope.startswith("cluster"))
    assert _ask(kubectl, user, "get", "secrets", f"-n={namespace}")
    for args in (
        ("get", "secrets", f"-n={other_namespace}"),
        ("list", "secrets", f"-n={namespace}"),
        ("delete", "nodes"),
        ("patch", "nodes"),
        ("delete", "rayservices.ray.io", f"-n={namespace}"),
        ("update", "rayservices.ray.io", f"-n={namespace}"),
        ("patch", "rayservices.ray.io", f"-n={other_namespace}"),
        ("create", "pods", f"-n={namespace}"),
        ("escalate", "roles.rbac.authorization.k8s.io", f"-n={namespace}"),
        ("bind", "roles.rbac.authorization.k8s.io", f"-n={namespace}"),
    ):
        assert not _ask(kubectl, user, *args), f"{user} may {' '.join(args)}"

    # The same, with the account's own token rather than impersonation.
    core = client.CoreV1Api(api_client)
    core.create_namespaced_secret(other_namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="hf-token")))
    core.create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="hf-token")))
    path = chartidentity.token_kubeconfig(kubeconfig, namespace, f"{release}-bigmodel-operator", tmp_path / "kc")
    as_operator = client.CoreV1Api(config.new_client_from_config(config_file=str(path)))
    assert as_operator.read_namespaced_secret("hf-token", namespace).metadata.name == "hf-token"
    for call in (
        lambda: as_operator.read_namespaced_secret("hf-token", other_namespace),
        lambda: as_operator.list_namespaced_secret(namespace),
        lambda: as_operator.delete_node("cpu-0", dry_run="All"),
    ):
        with pytest.raises(ApiException) as denied:
            call()
        assert denied.value.status == 403


def test_token_secret_permission_off(
    helm: Callable[..., Any], kubectl: Callable[..., Any], namespace: str, release: str
) -> None:
    helm("install", release, str(CHART), f"--namespace={namespace}", NO_CRDS, "--set=rbac.tokenSecrets=false")
    assert not _ask(kubectl, _account(namespace, release), "get", "secrets", f"-n={namespace}")


def _tiny_finetunejob() -> dict[str, Any]:
    return cluster_finetunejob("support-bot-v1")


def test_operator_in_namespace_list_mode_uses_only_documented_calls(
    helm: Callable[..., Any],
    kubeconfig: Path,
    api_client: Any,
    namespace: str,
    release: str,
    tmp_path: Path,
    wait_until: Callable[..., Any],
) -> None:
    """The operator, as the chart's account in namespace-list mode (which the controller scenarios cannot
    cover: they create namespaces as they go), serves a BigModel and a FineTuneJob without one 403, and
    every API call it makes (recorded by tests/cluster/apirecorder.py) is in the documented table."""
    from kubernetes import client

    helm("install", release, str(CHART), f"--namespace={namespace}", NO_CRDS, f"--set=watchNamespaces={{{namespace}}}")
    path = chartidentity.token_kubeconfig(kubeconfig, namespace, f"{release}-bigmodel-operator", tmp_path / "kc")
    calls = tmp_path / "calls.jsonl"
    url, recorder = chartidentity.start_recorder(kubeconfig, calls)
    chartidentity.via_recorder(path, url)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"resync_seconds": 3}))
    log = tmp_path / "operator.log"
    argv = [sys.executable, "-m", "bigmodel_operator.cli", "operator", f"--namespace={namespace}", f"--config={config}"]
    env = {**os.environ, "KUBECONFIG": str(path), "BIGMODEL_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    custom = client.CustomObjectsApi(api_client)
    try:
        started = time.monotonic()
        body = yaml.safe_load((REPO / "docs" / "examples" / "bigmodel-tiny-cpu.yaml").read_text())
        custom.create_namespaced_custom_object("bigmodel.io", "v1alpha1", namespace, "bigmodels", body)
        custom.create_namespaced_custom_object(
            "bigmodel.io", "v1alpha1", namespace, "finetunejobs", _tiny_finetunejob()
        )

        def rayservice() -> Any:
            return custom.list_namespaced_custom_object("ray.io", "v1", namespace, "rayservices")["items"]

        wait_until(rayservice, timeout=30, what=f"the RayService (operator log: {log})")
        assert time.monotonic() - started < 15, "start-up stalled (kopf retries a 403 for about a minute)"

        def succeeded() -> Any:
            ftj = custom.get_namespaced_custom_object(
                "bigmodel.io", "v1alpha1", namespace, "finetunejobs", "support-bot-v1"
            )
            return (ftj.get("status") or {}).get("phase") == "Succeeded"

        wait_until(succeeded, timeout=60, what=f"the FineTuneJob to succeed (operator log: {log})")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        recorder.terminate()
        recorder.wait(timeout=10)
    text = log.read_text()
    assert "HTTP 403" not in text and "Forbidden" not in text and "Not enough permissions" not in text, text[-3000:]
    used = {(kubectl_name(group, resource), verb) for group, resource, verb in apirecorder.summarize(calls)}
    assert used, "nothing was recorded"
    documented = expected(lambda scope: True)
    assert used <= documented, f"calls outside the documented set: {used - documented}"
