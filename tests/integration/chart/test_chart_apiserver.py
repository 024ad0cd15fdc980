"""The chart against the real apiserver: server-side dry-run, install, upgrade (CRDs included)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .conftest import CHART, dump_all

FIELD_MANAGER = "--field-manager=bigmodel-chart-tests"
NO_CRDS = "--set=crds.install=false"  # the shared cluster's CRDs belong to devcluster.py (module docstring)


def test_rendered_manifests_pass_server_side_dry_run(
    render: Callable[..., list[dict[str, Any]]], kubectl: Callable[..., Any], namespace: str, other_namespace: str
) -> None:
    """Every variant, the real CRDs included, is accepted by the apiserver (schemas, CEL, RBAC escalation)."""
    variants = [
        [],
        [f"--set=watchNamespaces={{{namespace},{other_namespace}}}", "--set=networkPolicy.enabled=true"],
        ["--set=rbac.tokenSecrets=false", "--set=logLevel=debug", "--set=crds.keep=false"],
    ]
    for values in variants:
        docs = render(*values, release="dry", namespace=namespace)
        out = kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "--force-conflicts",
            FIELD_MANAGER,
            "-f",
            "-",
            input=dump_all(docs),
        ).stdout
        assert out.count("(server dry run)") == len(docs), out


def _pod_of(api_client: Any, namespace: str, selector: str) -> Any:
    from kubernetes import client

    pods = client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector=selector).items
    return pods[0] if len(pods) == 1 else None


def test_install_and_upgrade_in_a_restricted_namespace(
    helm: Callable[..., Any],
    kubectl: Callable[..., Any],
    api_client: Any,
    namespace: str,
    release: str,
    wait_until: Callable[..., Any],
) -> None:
    """`helm install --wait` succeeds where pod security `restricted` is enforced; KWOK runs the pod."""
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    helm("install", release, str(CHART), f"--namespace={namespace}", NO_CRDS, "--wait", "--timeout=90s")
    selector = f"app.kubernetes.io/instance={release}"
    pod = wait_until(lambda: _pod_of(api_client, namespace, selector), timeout=30, what="the operator pod")
    assert pod.status.phase == "Running" and pod.spec.node_name == "cpu-0"
    status = yaml.safe_load(helm("status", release, f"--namespace={namespace}", "--output=yaml").stdout)
    assert status["info"]["status"] == "deployed"

    helm(
        "upgrade",
        release,
        str(CHART),
        f"--namespace={namespace}",
        NO_CRDS,
        "--set=logLevel=debug",
        "--wait",
        "--timeout=90s",
    )

    def rolled() -> Any:
        new = _pod_of(api_client, namespace, selector)
        return new and new.metadata.uid != pod.metadata.uid and "--verbose" in new.spec.containers[0].args and new

    wait_until(rolled, timeout=60, what="the pod to be replaced with --verbose")
    helm("uninstall", release, f"--namespace={namespace}", "--wait")
    gone = kubectl("get", "clusterrole", f"{release}-bigmodel-operator", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def _chart_with_test_group(src: Path, dest: Path, group: str, extra: dict[str, Any] | None = None) -> Path:
    """A copy of the chart whose CRDs live in API group `group` (no short names or categories, so that
    `kubectl get bm` and `kubectl get all` stay unambiguous for everyone sharing the cluster)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    for path in (dest / "files" / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        plural = crd["spec"]["names"]["plural"]
        crd["metadata"]["name"] = f"{plural}.{group}"
        crd["spec"]["group"] = group
        crd["spec"]["names"].pop("shortNames", None)
        crd["spec"]["names"].pop("categories", None)
        if extra:
            schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            schema["description"] = extra["description"]
            schema["properties"]["spec"]["properties"].update(extra["properties"])
        path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return dest


def test_helm_upgrade_upgrades_the_crds(
    helm: Callable[..., Any], kubectl: Callable[..., Any], namespace: str, release: str, tmp_path: Path
) -> None:
    group = f"{namespace}.test.bigmodel.io"
    names = [f"bigmodels.{group}", f"finetunejobs.{group}"]
    try:
        chart = _chart_with_test_group(CHART, tmp_path / "chart", group)
        helm("install", release, str(chart), f"--namespace={namespace}", "--set=rbac.create=false")
        kubectl("wait", "--for=condition=Established", "--timeout=30s", *(f"crd/{n}" for n in names))
        crd = yaml.safe_load(kubectl("get", "crd", names[0], "-o", "yaml").stdout)
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert (
            "upgradeProbe"
            not in crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        )

        extra = {"description": "upgraded by the chart test", "properties": {"upgradeProbe": {"type": "string"}}}
        chart = _chart_with_test_group(CHART, tmp_path / "chart", group, extra)
        helm("upgrade", release, str(chart), f"--namespace={namespace}", "--set=rbac.create=false")
        for name in names:
            schema = yaml.safe_load(kubectl("get", "crd", name, "-o", "yaml").stdout)["spec"]["versions"][0]["schema"]
            assert schema["openAPIV3Schema"]["description"] == "upgraded by the chart test"
            assert schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["upgradeProbe"] == {"type": "string"}

        helm("uninstall", release, f"--namespace={namespace}", "--wait")
        kept = kubectl("get", "crd", *names, "-o", "name").stdout.split()
        assert sorted(kept) == sorted(f"customresourcedefinition.apiextensions.k8s.io/{n}" for n in names)
    finally:
        kubectl("delete", "crd", *names, "--ignore-not-found", "--wait=false")
