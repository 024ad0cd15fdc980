"""A BigModel's scaling edit reaches the RayCluster its RayService runs on (real control plane, real operator).

KubeRay (v1.6) leaves worker replicas/minReplicas/maxReplicas out of the hash that decides whether a
RayService's RayCluster changes, so the operator patches them itself. KubeRay is not run here: the test
creates the RayCluster KubeRay would have created and writes the RayService status that names it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import GROUP, VERSION, load_example, or_none

pytestmark = pytest.mark.usefixtures("operator_process")

NAME = "tiny-cpu"


def _rayservice(custom: Any, namespace: str) -> Any:
    return or_none(custom.get_namespaced_custom_object, "ray.io", "v1", namespace, "rayservices", NAME)


def _raycluster(custom: Any, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = custom.get_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", name)
    return body


def _create_raycluster(custom: Any, namespace: str, name: str, rayservice: dict[str, Any], controller: bool) -> None:
    """A RayCluster from the RayService's rayClusterConfig, as KubeRay creates it (owner: the RayService)."""
    meta = rayservice["metadata"]
    owner = {"apiVersion": "ray.io/v1", "kind": "RayService", "name": meta["name"], "uid": meta["uid"]}
    body = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name, "ownerReferences": [{**owner, "controller": controller}]},
        "spec": copy.deepcopy(rayservice["spec"]["rayClusterConfig"]),
    }
    custom.create_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", body)


def _name_active_cluster(custom: Any, namespace: str, cluster: str) -> None:
    status = {"activeServiceStatus": {"rayClusterName": cluster}}
    custom.patch_namespaced_custom_object_status("ray.io", "v1", namespace, "rayservices", NAME, {"status": status})


def _edit_scaling(custom: Any, namespace: str, scaling: dict[str, Any]) -> None:
    patch = {"spec": {"scaling": scaling}}
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", NAME, patch)


def _bounds(cluster: dict[str, Any]) -> tuple[Any, Any, Any]:
    group = cluster["spec"]["workerGroupSpecs"][0]
    return group.get("minReplicas"), group.get("maxReplicas"), group.get("replicas")


def _observed(custom: Any, namespace: str, generation: int) -> Any:
    bm = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", NAME)
    return (bm.get("status") or {}).get("observedGeneration") == generation and bm


def _events(api_client: Any, namespace: str, reason: str) -> list[Any]:
    from kubernetes import client

    items = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    return [e for e in items if e.involved_object.name == NAME and e.reason == reason]


def test_scaling_edit_reaches_the_owned_raycluster_and_no_other(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    body = load_example("bigmodel-tiny-cpu.yaml")
    assert body["spec"]["scaling"] == {"replicas": 1}, "the example changed: adjust the bounds below"
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", body)
    rayservice = wait_until(lambda: _rayservice(custom, namespace), timeout=60, what="the RayService")
    _create_raycluster(custom, namespace, "tiny-cpu-active", rayservice, controller=True)
    _create_raycluster(custom, namespace, "tiny-cpu-foreign", rayservice, controller=False)
    assert _bounds(_raycluster(custom, namespace, "tiny-cpu-active")) == (1, 1, 1)
    _name_active_cluster(custom, namespace, "tiny-cpu-active")

    # The edit KubeRay's hash does not see: fixed 1 -> autoscaling between 2 and 3.
    _edit_scaling(custom, namespace, {"replicas": None, "minReplicas": 2, "maxReplicas": 3})

    def rendered(low: int, high: int) -> Any:
        rs = _rayservice(custom, namespace)
        group = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
        return (group["minReplicas"], group["maxReplicas"]) == (low, high) and rs

    wait_until(lambda: rendered(2, 3), timeout=60, what="the RayService with the new bounds")
    active = wait_until(
        lambda: (c := _raycluster(custom, namespace, "tiny-cpu-active")) and _bounds(c)[:2] == (2, 3) and c,
        timeout=60,
        what="the active RayCluster's worker group with minReplicas 2, maxReplicas 3",
    )
    assert _bounds(active) == (2, 3, 2), "replicas below the new minimum are raised to it"
    events = wait_until(lambda: _events(api_client, namespace, "WorkerBoundsSynced"), timeout=60, what="the Event")
    assert events[0].type == "Normal"
    assert "RayCluster tiny-cpu-active" in events[0].message and "maxReplicas 1 → 3" in events[0].message

    # A cluster the RayService does not control is left alone, even when the status names it.
    foreign = _raycluster(custom, namespace, "tiny-cpu-foreign")
    _name_active_cluster(custom, namespace, "tiny-cpu-foreign")
    _edit_scaling(custom, namespace, {"minReplicas": 2, "maxReplicas": 4})
    generation = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", NAME)["metadata"][
        "generation"
    ]
    # The reconcile of this generation applies the RayService (whose answer carries the status naming the
    # foreign cluster) and handles the cluster before it writes observedGeneration: after that, nothing is pending.
    wait_until(lambda: _observed(custom, namespace, generation), timeout=60, what="the edit's reconcile")
    after = _raycluster(custom, namespace, "tiny-cpu-foreign")
    assert after["metadata"]["resourceVersion"] == foreign["metadata"]["resourceVersion"]
    assert _bounds(after) == (1, 1, 1)
    assert _bounds(_raycluster(custom, namespace, "tiny-cpu-active")) == (2, 3, 2), "no longer named: untouched"
    assert not _events(api_client, namespace, "WorkerBoundsSyncFailed")


def _pending_pod(core: Any, namespace: str, cluster: dict[str, Any], name: str) -> Any:
    """A worker pod as KubeRay creates it, held Pending by a node selector no node matches."""
    from kubernetes import client

    meta = cluster["metadata"]
    owner = client.V1OwnerReference(
        api_version="ray.io/v1", kind="RayCluster", name=meta["name"], uid=meta["uid"], controller=True
    )
    labels = {"ray.io/cluster": meta["name"], "ray.io/node-type": "worker", "ray.io/group": "cpu-workers"}
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels, owner_references=[owner]),
        spec=client.V1PodSpec(
            node_selector={"bigmodel.io/e2e-nowhere": "true"},
            containers=[client.V1Container(name="ray-worker", image="example.invalid/ray:0")],
        ),
    )
    return core.create_namespaced_pod(namespace, pod)


def test_tolerations_edit_reaches_the_raycluster_and_recreates_its_pending_pods(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    """KubeRay leaves tolerations out of its hash too: the operator adds them to the cluster's templates and
    deletes the cluster's Pending, unscheduled pods (KubeRay recreates them from the templates)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    body = load_example("bigmodel-tiny-cpu.yaml")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", body)
    rayservice = wait_until(lambda: _rayservice(custom, namespace), timeout=60, what="the RayService")
    _create_raycluster(custom, namespace, "tiny-cpu-active", rayservice, controller=True)
    cluster = _raycluster(custom, namespace, "tiny-cpu-active")
    pending = _pending_pod(core, namespace, cluster, "tiny-cpu-active-worker-pending")
    _name_active_cluster(custom, namespace, "tiny-cpu-active")

    toleration = {"key": "team", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}
    patch = {"spec": {"tolerations": [toleration]}}
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", NAME, patch)

    def template_tolerations() -> Any:
        group = _raycluster(custom, namespace, "tiny-cpu-active")["spec"]["workerGroupSpecs"][0]
        return group["template"]["spec"].get("tolerations")

    assert wait_until(template_tolerations, timeout=60, what="the tolerations in the RayCluster") == [toleration]

    def gone() -> bool:
        pods = core.list_namespaced_pod(namespace, label_selector="ray.io/cluster=tiny-cpu-active").items
        return not [p for p in pods if p.metadata.uid == pending.metadata.uid]

    wait_until(gone, timeout=60, what="the Pending pod deleted (KubeRay recreates it with the tolerations)")
    events = wait_until(lambda: _events(api_client, namespace, "TolerationsSynced"), timeout=60, what="the Event")
    assert "recreated 1 Pending" in events[0].message, events[0].message
    assert not _events(api_client, namespace, "WorkerBoundsSyncFailed")
