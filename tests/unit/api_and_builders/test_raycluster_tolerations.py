"""Tolerations edits reach the running RayCluster (KubeRay leaves them out of its hash), and its Pending,
unscheduled pods of the changed groups are recreated; running pods and pods of other owners are left alone."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.raycluster_tolerations import tolerations_changes, tolerations_patch
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.reconcile.raycluster_sync import TOLERATIONS_SYNCED, WorkerBoundsSync

from .conftest import load_example

RS_UID, RC_UID = "rs-uid-1", "rc-uid-1"
TAINT = {"key": "team", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}


def _rendered(tolerations: list[dict[str, Any]] | None) -> dict[str, Any]:
    body = load_example("bigmodel-tiny-cpu.yaml")
    body["metadata"]["namespace"] = "team-a"
    if tolerations is not None:
        body["spec"]["tolerations"] = tolerations
    spec = BigModelSpec.model_validate(body["spec"])
    rayservice = build_rayservice(body, spec, placement(spec, None), OperatorConfig())
    rayservice["metadata"]["uid"] = RS_UID
    rayservice["status"] = {"activeServiceStatus": {"rayClusterName": "tiny-cpu-abc"}}
    return rayservice


def _cluster_from(rayservice: dict[str, Any]) -> dict[str, Any]:
    refs = [{"kind": "RayService", "name": "tiny-cpu", "uid": RS_UID, "controller": True}]
    return {
        "kind": "RayCluster",
        "metadata": {"name": "tiny-cpu-abc", "namespace": "team-a", "uid": RC_UID, "ownerReferences": refs},
        "spec": copy.deepcopy(rayservice["spec"]["rayClusterConfig"]),
    }


def test_no_change_no_patch_and_empty_fields_compare_equal() -> None:
    rendered = _rendered([TAINT])
    live = _cluster_from(rendered)
    assert tolerations_changes(rendered, live) == []
    live["spec"]["workerGroupSpecs"][0]["template"]["spec"]["tolerations"][0]["tolerationSeconds"] = None
    assert tolerations_changes(rendered, live) == [], "an empty field (as a round trip may carry it) is no change"
    assert "tolerations" not in live["spec"]["headGroupSpec"]["template"]["spec"], "the head runs on any node"


def test_missing_tolerations_are_added_and_none_is_removed() -> None:
    before = _rendered(None)
    live = _cluster_from(before)
    after = _rendered([TAINT])
    changes = tolerations_changes(after, live)
    assert [c.group for c in changes] == ["cpu-workers"]
    assert tolerations_patch(changes) == [
        {"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": "cpu-workers"},
        {"op": "add", "path": "/spec/workerGroupSpecs/0/template/spec/tolerations", "value": [TAINT]},
    ]
    tolerated = _cluster_from(after)
    injected = {"key": "kueue.x-k8s.io/queue", "operator": "Exists", "effect": "NoSchedule"}
    tolerated["spec"]["workerGroupSpecs"][0]["template"]["spec"]["tolerations"].append(injected)
    other = {**TAINT, "value": "chat"}
    ops = tolerations_patch(tolerations_changes(_rendered([other]), tolerated))
    assert ops[1] == {
        "op": "replace",
        "path": "/spec/workerGroupSpecs/0/template/spec/tolerations",
        "value": [TAINT, injected, other],
    }, "what others put there (a queueing controller) stays; the new one is added"
    assert tolerations_changes(before, tolerated) == [], "a removal waits for KubeRay's next cluster"


class FakeKube:
    """The calls the sync makes: one RayCluster, its pods, the patches and deletions."""

    def __init__(self, cluster: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        self.cluster, self.pods = cluster, pods
        self.patches: list[list[dict[str, Any]]] = []
        self.deleted: list[tuple[str, str | None]] = []
        self.selectors: list[str | None] = []

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.cluster if kind == "RayCluster" and name == self.cluster["metadata"]["name"] else None

    async def json_patch(self, kind: str, namespace: str, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        self.patches.append(ops)
        return {}

    async def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict]:
        assert kind == "Pod"
        self.selectors.append(label_selector)
        return self.pods

    async def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        assert kind == "Pod"
        self.deleted.append((name, uid))


def _pod(name: str, group: str, phase: str, node: str | None = None, owner: str = RC_UID) -> dict[str, Any]:
    labels = {"ray.io/cluster": "tiny-cpu-abc"}
    labels.update(
        {"ray.io/node-type": "head"} if group == "head" else {"ray.io/node-type": "worker", "ray.io/group": group}
    )
    spec = {"nodeName": node} if node else {}
    refs = [{"kind": "RayCluster", "name": "tiny-cpu-abc", "uid": owner, "controller": True}]
    meta = {"name": name, "uid": f"uid-{name}", "labels": labels, "ownerReferences": refs}
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


def test_sync_patches_the_cluster_and_recreates_only_its_unscheduled_pods() -> None:
    before, after = _rendered(None), _rendered([TAINT])
    pods = [
        _pod("head", "head", "Running", node="n1"),
        _pod("w-pending", "cpu-workers", "Pending"),
        _pod("w-bound", "cpu-workers", "Pending", node="n1"),  # scheduled, pulling its image: left alone
        _pod("w-running", "cpu-workers", "Running", node="n1"),
        _pod("w-foreign", "cpu-workers", "Pending", owner="someone-else"),
    ]
    kube = FakeKube(_cluster_from(before), pods)
    events: list[tuple[str, str, str]] = []
    sync = WorkerBoundsSync(kube, lambda body, type_, reason, message: events.append((type_, reason, message)))  # type: ignore[arg-type]
    body = {"metadata": {"name": "tiny-cpu", "namespace": "team-a"}}
    asyncio.run(sync.sync(body, after, after))
    (ops,) = kube.patches
    assert [op["path"] for op in ops if op["op"] == "add"] == ["/spec/workerGroupSpecs/0/template/spec/tolerations"]
    assert kube.selectors == ["ray.io/cluster=tiny-cpu-abc"]
    assert kube.deleted == [("w-pending", "uid-w-pending")]
    ((type_, reason, message),) = events
    assert (type_, reason) == ("Normal", TOLERATIONS_SYNCED)
    assert "RayCluster tiny-cpu-abc (cpu-workers)" in message and "recreated 1 Pending" in message
    asyncio.run(sync.sync(body, after, after))  # in line: nothing read, patched or deleted again
    assert len(kube.patches) == 1 and len(kube.deleted) == 1
