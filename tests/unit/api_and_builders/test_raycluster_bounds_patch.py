"""Worker bounds of a running RayCluster follow the rendered RayService (KubeRay leaves them out of its hash)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.raycluster_bounds import bounds_changes, describe, json_patch
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.kube import ApiError
from bigmodel_operator.reconcile.raycluster_sync import SYNC_FAILED, SYNCED, WorkerBoundsSync, cluster_names

from .conftest import load_example


def raycluster_bounds_patch(rayservice: dict[str, Any], raycluster: dict[str, Any]) -> list[dict[str, Any]]:
    """What reconcile/raycluster_sync.py sends: the changes as a JSON patch of the live cluster."""
    return json_patch(bounds_changes(rayservice, raycluster), raycluster)


RS_UID = "rs-uid-1"


def _group(name: str, replicas: int | None, low: int, high: int) -> dict[str, Any]:
    group: dict[str, Any] = {"groupName": name, "minReplicas": low, "maxReplicas": high, "template": {}}
    if replicas is not None:
        group["replicas"] = replicas
    return group


def _rayservice(*groups: dict[str, Any], autoscaling: bool = True) -> dict[str, Any]:
    return {
        "kind": "RayService",
        "metadata": {"name": "m", "namespace": "team-a", "uid": RS_UID},
        "spec": {"rayClusterConfig": {"enableInTreeAutoscaling": autoscaling, "workerGroupSpecs": list(groups)}},
        "status": {"activeServiceStatus": {"rayClusterName": "m-abc"}},
    }


def _raycluster(*groups: dict[str, Any], owner: str = RS_UID) -> dict[str, Any]:
    refs = [{"kind": "RayService", "name": "m", "uid": owner, "controller": True}]
    return {
        "kind": "RayCluster",
        "metadata": {"name": "m-abc", "namespace": "team-a", "ownerReferences": refs},
        "spec": {"workerGroupSpecs": list(groups)},
    }


def _test(index: int, name: str) -> dict[str, Any]:
    return {"op": "test", "path": f"/spec/workerGroupSpecs/{index}/groupName", "value": name}


def _replace(index: int, key: str, value: int) -> dict[str, Any]:
    return {"op": "replace", "path": f"/spec/workerGroupSpecs/{index}/{key}", "value": value}


# (rendered group, live group, expected operations after the `test`): autoscaler on.
CASES = [
    pytest.param(_group("w", 1, 1, 2), _group("w", 1, 1, 2), [], id="same bounds: nothing"),
    pytest.param(_group("w", 1, 1, 4), _group("w", 1, 1, 2), [_replace(0, "maxReplicas", 4)], id="max raised"),
    pytest.param(
        _group("w", 2, 2, 4),
        _group("w", 3, 1, 4),
        [_replace(0, "minReplicas", 2)],
        id="min raised, replicas inside: the autoscaler keeps them",
    ),
    pytest.param(
        _group("w", 3, 3, 5),
        _group("w", 1, 1, 5),
        [_replace(0, "minReplicas", 3), _replace(0, "replicas", 3)],
        id="min raised above replicas: clamped up",
    ),
    pytest.param(
        _group("w", 1, 1, 2),
        _group("w", 4, 1, 6),
        [_replace(0, "maxReplicas", 2), _replace(0, "replicas", 2)],
        id="max lowered below replicas: clamped down",
    ),
    pytest.param(
        _group("w", 3, 3, 3),
        _group("w", 1, 1, 2),
        [_replace(0, "minReplicas", 3), _replace(0, "maxReplicas", 3), _replace(0, "replicas", 3)],
        id="fixed replicas (min == max): exactly that many",
    ),
    pytest.param(
        _group("w", 0, 0, 1),
        _group("w", 1, 1, 1),
        [_replace(0, "minReplicas", 0)],
        id="fixed replicas 0 (min 0, max 1): the autoscaler may still wake one",
    ),
    pytest.param(_group("w", 1, 1, 2), _group("w", None, 1, 1), [_replace(0, "maxReplicas", 2)], id="no replicas"),
]


@pytest.mark.parametrize(("rendered", "live", "ops"), CASES)
def test_patch_with_the_autoscaler_on(rendered: dict[str, Any], live: dict[str, Any], ops: list[dict]) -> None:
    patch = raycluster_bounds_patch(_rayservice(rendered), _raycluster(live))
    assert patch == ([_test(0, "w"), *ops] if ops else [])


def test_without_the_autoscaler_the_rendered_replicas_are_the_count() -> None:
    patch = raycluster_bounds_patch(
        _rayservice(_group("w", 2, 2, 4), autoscaling=False), _raycluster(_group("w", 3, 2, 4))
    )
    assert patch == [_test(0, "w"), _replace(0, "replicas", 2)]


def test_groups_are_matched_by_name_and_guarded_by_their_index() -> None:
    rendered = _rayservice(_group("a", 1, 1, 2), _group("b", 1, 1, 8))
    live = _raycluster(_group("b", 1, 1, 2), _group("a", 1, 1, 2), _group("c", 1, 1, 2))
    assert raycluster_bounds_patch(rendered, live) == [_test(0, "b"), _replace(0, "maxReplicas", 8)]


def test_a_missing_field_is_added() -> None:
    live = _raycluster({"groupName": "w", "replicas": 1, "minReplicas": 1})
    patch = raycluster_bounds_patch(_rayservice(_group("w", 1, 1, 2)), live)
    assert patch == [_test(0, "w"), {"op": "add", "path": "/spec/workerGroupSpecs/0/maxReplicas", "value": 2}]


@pytest.mark.parametrize(
    "live",
    [
        {"kind": "RayCluster", "metadata": {}},
        _raycluster({"groupName": ["odd"]}, "not a group"),  # type: ignore[arg-type]
        _raycluster(_group("renamed", 1, 1, 1)),
    ],
    ids=["no spec", "malformed groups", "no group of that name"],
)
def test_nothing_to_match_is_no_patch(live: dict[str, Any]) -> None:
    assert raycluster_bounds_patch(_rayservice(_group("w", 1, 1, 2)), live) == []


def test_describe_says_old_and_new() -> None:
    changes = bounds_changes(_rayservice(_group("w", 3, 3, 5)), _raycluster({"groupName": "w", "replicas": 1}))
    assert describe(changes) == "w: minReplicas unset → 3, maxReplicas unset → 5, replicas 1 → 3"


def test_rendered_bigmodel_bounds_reach_a_cluster_built_from_the_old_rendering() -> None:
    """The real builder: replicas 1 -> 1..3 patches exactly the worker group's maxReplicas."""
    config = OperatorConfig()
    body = load_example("bigmodel-tiny-cpu.yaml")
    spec = BigModelSpec.model_validate(body["spec"])
    assert spec.scaling and spec.scaling.replicas == 1
    old = build_rayservice(body, spec, placement(spec, None), config)
    cluster = _raycluster(*copy.deepcopy(old["spec"]["rayClusterConfig"]["workerGroupSpecs"]))
    body["spec"]["scaling"] = {"minReplicas": 1, "maxReplicas": 3}
    edited = BigModelSpec.model_validate(body["spec"])
    new = build_rayservice(body, edited, placement(edited, None), config)
    group = new["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert group["maxReplicas"] == 3
    assert raycluster_bounds_patch(new, cluster) == [_test(0, group["groupName"]), _replace(0, "maxReplicas", 3)]
    assert raycluster_bounds_patch(new, _raycluster(*new["spec"]["rayClusterConfig"]["workerGroupSpecs"])) == []


class FakeKube:
    """The two calls the sync makes, over a dict of RayClusters."""

    def __init__(self, *clusters: dict[str, Any], fail: ApiError | None = None) -> None:
        self.clusters = {c["metadata"]["name"]: c for c in clusters}
        self.fail = fail
        self.gets: list[str] = []
        self.patches: list[tuple[str, list[dict[str, Any]]]] = []

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        assert kind == "RayCluster"
        self.gets.append(name)
        return self.clusters.get(name)

    async def json_patch(self, kind: str, namespace: str, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        if self.fail:
            raise self.fail
        self.patches.append((name, ops))
        return {}


BODY = {"metadata": {"name": "m", "namespace": "team-a"}}


def _sync(kube: FakeKube) -> tuple[WorkerBoundsSync, list[tuple[str, str, str]]]:
    events: list[tuple[str, str, str]] = []
    sync = WorkerBoundsSync(kube, lambda body, type_, reason, message: events.append((type_, reason, message)))  # type: ignore[arg-type]
    return sync, events


def test_sync_patches_an_owned_cluster_once_and_then_reads_nothing() -> None:
    kube = FakeKube(_raycluster(_group("w", 1, 1, 2)))
    sync, events = _sync(kube)
    desired = _rayservice(_group("w", 1, 1, 4))
    asyncio.run(sync.sync(BODY, desired, desired))
    assert kube.patches == [("m-abc", [_test(0, "w"), _replace(0, "maxReplicas", 4)])]
    assert events == [("Normal", SYNCED, "Updated the worker bounds of RayCluster m-abc: w: maxReplicas 2 → 4")]
    asyncio.run(sync.sync(BODY, desired, desired))  # an idle resync: the cluster is known to be in line
    assert kube.gets == ["m-abc"] and len(kube.patches) == 1


def test_sync_leaves_a_cluster_it_does_not_control_alone() -> None:
    kube = FakeKube(_raycluster(_group("w", 1, 1, 2), owner="someone-else"))
    sync, events = _sync(kube)
    desired = _rayservice(_group("w", 1, 1, 4))
    asyncio.run(sync.sync(BODY, desired, desired))
    assert kube.patches == [] and events == []


def test_sync_of_a_missing_cluster_is_quiet() -> None:
    kube = FakeKube()
    sync, events = _sync(kube)
    desired = _rayservice(_group("w", 1, 1, 4))
    asyncio.run(sync.sync(BODY, desired, desired))
    assert events == []


def test_sync_failure_is_one_warning_and_no_exception() -> None:
    kube = FakeKube(_raycluster(_group("w", 1, 1, 2)), fail=ApiError(403, '{"message": "forbidden"}', "PATCH", "/x"))
    sync, events = _sync(kube)
    desired = _rayservice(_group("w", 1, 1, 4))
    asyncio.run(sync.sync(BODY, desired, desired))
    asyncio.run(sync.sync(BODY, desired, desired))  # retried, but not announced twice
    assert kube.gets == ["m-abc", "m-abc"]
    assert [(t, r) for t, r, _ in events] == [("Warning", SYNC_FAILED)]
    assert "forbidden" in events[0][2]


def test_a_404_on_the_patch_is_not_a_failure() -> None:
    kube = FakeKube(_raycluster(_group("w", 1, 1, 2)), fail=ApiError(404, "{}", "PATCH", "/x"))
    sync, events = _sync(kube)
    desired = _rayservice(_group("w", 1, 1, 4))
    asyncio.run(sync.sync(BODY, desired, desired))
    assert events == []


def test_cluster_names_active_then_pending() -> None:
    rs = {"status": {"activeServiceStatus": {"rayClusterName": "a"}, "pendingServiceStatus": {"rayClusterName": "b"}}}
    assert cluster_names(rs) == ["a", "b"]
    assert cluster_names({"status": {"pendingServiceStatus": {"rayClusterName": ""}}}) == []
    assert cluster_names(None) == []
