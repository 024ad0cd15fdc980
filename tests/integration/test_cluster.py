"""The test control plane itself: versions, fake GPU nodes, KWOK pod lifecycles, GC, RBAC."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

KUBE_VERSION = "v1.36.3"
H100 = "NVIDIA-H100-80GB-HBM3"
GPU_TOLERATION = client.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
# Pods may wait for the scheduler and KWOK; generous for slow CI machines.
POD_TIMEOUT = 90


def _pod(
    name: str,
    *,
    gpus: int = 0,
    tolerate: bool = False,
    node_selector: dict | None = None,
    annotations: dict | None = None,
) -> client.V1Pod:
    resources = None
    if gpus:
        resources = client.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus)})
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, annotations=annotations),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="main", image="busybox", resources=resources)],
            tolerations=[GPU_TOLERATION] if tolerate else None,
            node_selector=node_selector,
            restart_policy="Never",
        ),
    )


def _phase(core: client.CoreV1Api, namespace: str, name: str, phase: str) -> Callable[[], Any]:
    def check() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase == phase else None

    return check


def test_apiserver_and_kubectl_report_the_built_version(api_client: Any, kubectl: Callable) -> None:
    assert client.VersionApi(api_client).get_code().git_version == KUBE_VERSION
    versions = json.loads(kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == KUBE_VERSION


def test_fake_nodes_are_ready_with_gpu_capacity(api_client: Any) -> None:
    nodes = {n.metadata.name: n for n in client.CoreV1Api(api_client).list_node().items}
    assert {"gpu-h100-0", "gpu-a100-0", "cpu-0"} <= nodes.keys()
    for node in nodes.values():
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True", node.metadata.name
    h100 = nodes["gpu-h100-0"]
    assert h100.metadata.labels["nvidia.com/gpu.product"] == H100
    assert h100.status.allocatable["nvidia.com/gpu"] == "8"
    assert [(t.key, t.effect) for t in h100.spec.taints] == [("nvidia.com/gpu", "NoSchedule")]
    assert nodes["gpu-a100-0"].metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert "nvidia.com/gpu" not in nodes["cpu-0"].status.allocatable


def test_gpu_pod_with_toleration_runs_on_the_h100_node(api_client: Any, namespace: str, wait_until: Callable) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(
        namespace, _pod("gpu", gpus=1, tolerate=True, node_selector={"nvidia.com/gpu.product": H100})
    )
    pod = wait_until(_phase(core, namespace, "gpu", "Running"), timeout=POD_TIMEOUT, what="pod gpu Running")
    assert pod.spec.node_name == "gpu-h100-0"
    assert pod.status.container_statuses[0].ready is True


def test_gpu_pod_without_toleration_stays_pending(api_client: Any, namespace: str, wait_until: Callable) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(namespace, _pod("no-toleration", gpus=1))

    def unschedulable() -> Any:
        pod = core.read_namespaced_pod("no-toleration", namespace)
        conditions = {c.type: c for c in pod.status.conditions or []}
        scheduled = conditions.get("PodScheduled")
        return pod if scheduled and scheduled.reason == "Unschedulable" else None

    pod = wait_until(unschedulable, timeout=POD_TIMEOUT, what="PodScheduled=False/Unschedulable")
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None


def _job(name: str, annotations: dict | None = None) -> client.V1Job:
    template = client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(annotations=annotations), spec=_pod("unused").spec)
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(backoff_limit=0, template=template),
    )


def _job_condition(batch: client.BatchV1Api, namespace: str, name: str, condition: str) -> Callable[[], Any]:
    def check() -> Any:
        status = batch.read_namespaced_job_status(name, namespace).status
        conditions = {c.type: c.status for c in status.conditions or []}
        return status if conditions.get(condition) == "True" else None

    return check


def test_job_pod_completes_and_job_is_complete(api_client: Any, namespace: str, wait_until: Callable) -> None:
    batch = client.BatchV1Api(api_client)
    batch.create_namespaced_job(namespace, _job("train"))
    status = wait_until(_job_condition(batch, namespace, "train", "Complete"), timeout=POD_TIMEOUT, what="Job Complete")
    assert status.succeeded == 1


def test_job_pod_with_complete_after_runs_first(api_client: Any, namespace: str, wait_until: Callable) -> None:
    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    batch.create_namespaced_job(namespace, _job("slow", {"bigmodel.io/kwok-complete-after": "5s"}))

    def running_pod() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector="job-name=slow").items
        return pods[0] if pods and pods[0].status.phase == "Running" else None

    wait_until(running_pod, timeout=POD_TIMEOUT, what="Job pod Running")
    assert batch.read_namespaced_job_status("slow", namespace).status.succeeded in (None, 0)
    wait_until(_job_condition(batch, namespace, "slow", "Complete"), timeout=POD_TIMEOUT, what="Job Complete")


def test_job_with_fail_annotation_fails(api_client: Any, namespace: str, wait_until: Callable) -> None:
    batch = client.BatchV1Api(api_client)
    batch.create_namespaced_job(namespace, _job("crash", {"bigmodel.io/kwok-fail": "true"}))
    status = wait_until(_job_condition(batch, namespace, "crash", "Failed"), timeout=POD_TIMEOUT, what="Job Failed")
    assert status.failed == 1


def test_pod_with_fail_annotation_fails(api_client: Any, namespace: str, wait_until: Callable) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(namespace, _pod("doomed", annotations={"bigmodel.io/kwok-fail": "true"}))
    pod = wait_until(_phase(core, namespace, "doomed", "Failed"), timeout=POD_TIMEOUT, what="pod doomed Failed")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (1, "Error")


def test_owner_reference_garbage_collection(api_client: Any, namespace: str, wait_until: Callable) -> None:
    core = client.CoreV1Api(api_client)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name="owned",
                owner_references=[
                    client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
                ],
            )
        ),
    )
    core.delete_namespaced_config_map("owner", namespace)

    def owned_gone() -> bool:
        try:
            core.read_namespaced_config_map("owned", namespace)
        except ApiException as err:
            if err.status == 404:
                return True
            raise
        return False

    wait_until(owned_gone, timeout=60, what="garbage collection of ConfigMap owned")


def test_service_account_token_is_subject_to_rbac(api_client: Any, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="limited"))
    )
    token = core.create_namespaced_service_account_token(
        "limited",
        namespace,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)),
    ).status.token

    admin = api_client.configuration
    config = client.Configuration()
    config.host = admin.host
    config.ssl_ca_cert = admin.ssl_ca_cert
    config.api_key = {"BearerToken": token}
    config.api_key_prefix = {"BearerToken": "Bearer"}
    with client.ApiClient(config) as limited:
        review = client.AuthenticationV1Api(limited).create_self_subject_review(client.V1SelfSubjectReview())
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:limited"
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(limited).list_namespaced_secret(namespace)
    assert denied.value.status == 403
