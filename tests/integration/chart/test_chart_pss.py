"""Every pod the project renders is admitted where Pod Security `restricted` is enforced.

The pods are built the way their controllers build them: the operator's from the chart's Deployment;
Ray head and worker pods from a BigModel's RayService (the golden files of the operator's builders) plus
what KubeRay v1.6 adds (the autoscaler sidecar with `autoscalerOptions.securityContext` on the head, the
`wait-gcs-ready` init container with the Ray container's securityContext on workers); the trainer's from
its Job's pod template. They are created with a server-side dry run, which runs admission (PodSecurity
included) without scheduling anything. The chart's pod is also created for real by
test_chart_apiserver.py::test_install_and_upgrade_in_a_restricted_namespace.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import REPO, find

GOLDEN = REPO / "tests" / "unit" / "api_and_builders" / "golden"
RAYSERVICES = sorted(GOLDEN.glob("*.rayservice.yaml"))


@pytest.fixture
def restricted(kubectl: Callable[..., Any], namespace: str) -> str:
    kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )
    return namespace


def _pod(name: str, template: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(template["spec"])
    labels = (template.get("metadata") or {}).get("labels") or {}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec}


def _admit(kubectl: Callable[..., Any], namespace: str, pod: dict[str, Any]) -> Any:
    return kubectl(
        "create",
        "--dry-run=server",
        f"--namespace={namespace}",
        "-o",
        "json",
        "-f",
        "-",
        input=json.dumps(pod),
        check=False,
    )


def _assert_admitted(kubectl: Callable[..., Any], namespace: str, pod: dict[str, Any]) -> None:
    proc = _admit(kubectl, namespace, pod)
    assert proc.returncode == 0, f"pod {pod['metadata']['name']} refused:\n{proc.stderr}"
    assert "would violate PodSecurity" not in proc.stderr, proc.stderr


def ray_pods(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    """Head and worker pods as KubeRay v1.6 builds them from a RayService (the security-relevant parts)."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    head = _pod("ray-head", cluster["headGroupSpec"]["template"])
    if cluster.get("enableInTreeAutoscaling"):
        options = cluster.get("autoscalerOptions") or {}
        sidecar = {
            "name": "autoscaler",
            "image": head["spec"]["containers"][0]["image"],
            "command": ["/bin/bash", "-lc", "--"],
            "args": [
                "ray kuberay-autoscaler --cluster-name $(RAY_CLUSTER_NAME) --cluster-namespace $(RAY_CLUSTER_NAMESPACE)"
            ],
            "resources": options.get("resources") or {},
        }
        if "securityContext" in options:
            sidecar["securityContext"] = options["securityContext"]
        head["spec"]["containers"].append(sidecar)
    pods = [head]
    for group in cluster.get("workerGroupSpecs") or []:
        worker = _pod(f"ray-worker-{group['groupName']}", group["template"])
        ray = worker["spec"]["containers"][0]
        init = {
            "name": "wait-gcs-ready",
            "image": ray["image"],
            "command": ["/bin/bash", "-lc", "--"],
            "args": ["until ray health-check --address head-svc:6379; do sleep 5; done"],
            "resources": {"limits": {"cpu": "200m", "memory": "256Mi"}, "requests": {"cpu": "200m", "memory": "256Mi"}},
        }
        if "securityContext" in ray:
            init["securityContext"] = ray["securityContext"]
        worker["spec"]["initContainers"] = [init]
        pods.append(worker)
    return pods


def test_the_namespace_really_enforces_restricted(kubectl: Callable[..., Any], restricted: str) -> None:
    """The control: a root pod without a security context is refused there."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "careless"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }
    proc = _admit(kubectl, restricted, pod)
    assert proc.returncode != 0 and "violates PodSecurity" in proc.stderr, proc.stderr


def test_operator_pod(
    render: Callable[..., list[dict[str, Any]]], kubectl: Callable[..., Any], restricted: str
) -> None:
    deployment = find(render(namespace=restricted), "Deployment")
    pod = _pod("operator", deployment["spec"]["template"])
    pod["spec"]["serviceAccountName"] = "default"  # the chart's account is not installed by this test
    _assert_admitted(kubectl, restricted, pod)


@pytest.mark.parametrize("path", RAYSERVICES, ids=[p.name.split(".rayservice")[0] for p in RAYSERVICES])
def test_ray_head_and_worker_pods(path: Path, api_client: Any, kubectl: Callable[..., Any], restricted: str) -> None:
    from kubernetes import client

    pods = ray_pods(yaml.safe_load(path.read_text()))
    assert len(pods) >= 2
    # The operator creates the account the Ray pods run as (<bigmodel>-serving) before the RayService.
    for account in sorted({str(pod["spec"]["serviceAccountName"]) for pod in pods}):
        client.CoreV1Api(api_client).create_namespaced_service_account(
            restricted, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=account))
        )
    for pod in pods:
        _assert_admitted(kubectl, restricted, pod)


def test_trainer_pod(api_client: Any, kubectl: Callable[..., Any], restricted: str) -> None:
    from kubernetes import client

    job = yaml.safe_load((GOLDEN / "finetunejob-lora.children.yaml").read_text())["job"]
    pod = _pod("trainer", job["spec"]["template"])
    account = pod["spec"]["serviceAccountName"]
    client.CoreV1Api(api_client).create_namespaced_service_account(
        restricted, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=account))
    )
    _assert_admitted(kubectl, restricted, pod)
