"""The order of a BigModel's child writes (reconcile/bigmodel_reconcile.py: _apply_children): no Ray pod without its
NetworkPolicy, and the pods' ServiceAccount is the gate (the apiserver refuses a pod whose account does not exist).
A new BigModel writes the RayService first, alone (the paced create -> RayService latency of docs/benchmarks.md),
then the policy, then the rest at once, every RoleBinding after its Role; the account only once the policy is
written. Once the account exists, the policy goes before the RayService."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bigmodel_operator.conditions import Reason, get_condition
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.kube import ApiError
from bigmodel_operator.reconcile.bigmodel_reconcile import BigModelReconciler
from bigmodel_operator.reconcile.children import AlreadyReportedError
from bigmodel_operator.reconcile.state import ClusterState

from .conftest import FakeKube, tiny_bigmodel


class OrderedKube(FakeKube):
    """Records (event, kind) for every child write as it starts and ends; refuses applies of `refuse` with 422."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.refuse = refuse
        self.log: list[tuple[str, str]] = []

    async def apply(self, obj: dict[str, Any], *, if_absent: bool = False) -> dict[str, Any]:
        self.log.append(("start", obj["kind"]))
        await asyncio.sleep(0.01)  # a round trip: writes issued together all start before the first ends
        try:
            if obj["kind"] in self.refuse:
                error = ApiError(422, json.dumps({"message": "denied by policy"}), "PATCH", "/x")
                error.kind_name = f"{obj['kind']} {obj['metadata']['name']}"
                raise error
            return await super().apply(obj, if_absent=if_absent)
        finally:
            self.log.append(("end", obj["kind"]))

    async def request(self, method: str, path: str, *, body: Any = None, **kwargs: Any) -> dict[str, Any] | None:
        if method == "POST" and body and body.get("kind") == "Secret":
            self.log.append(("start", "Secret"))
            await asyncio.sleep(0.01)
            try:
                return await super().request(method, path, body=body, **kwargs)
            finally:
                self.log.append(("end", "Secret"))
        return await super().request(method, path, body=body, **kwargs)


def _run(kube: OrderedKube, reconciler: BigModelReconciler, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    reconciler.state.put(body)
    asyncio.run(reconciler.run(("BigModel", meta["namespace"], meta["name"])))


def _reconciler(kube: OrderedKube) -> BigModelReconciler:
    return BigModelReconciler(kube, ClusterState(), OperatorConfig(), lambda *_: None)  # type: ignore[arg-type]


def test_the_rayservice_goes_first_alone_then_the_policy_then_the_rest() -> None:
    kube = OrderedKube()
    body = kube.put(tiny_bigmodel("tiny"))
    _run(kube, _reconciler(kube), body)
    assert kube.log[:4] == [
        ("start", "RayService"),
        ("end", "RayService"),
        ("start", "NetworkPolicy"),
        ("end", "NetworkPolicy"),
    ], kube.log
    rest = kube.log[4:]
    started = {kind for event, kind in rest if event == "start"}
    assert started == {"ServiceAccount", "Role", "RoleBinding", "Secret"}, rest
    assert rest.index(("end", "Role")) < rest.index(("start", "RoleBinding")), "a RoleBinding goes after its Role"
    # The rest at once: the account, the Role and the Secret all start before any of them ends.
    first_end = next(i for i, (event, _) in enumerate(rest) if event == "end")
    assert {kind for _, kind in rest[:first_end]} == {"ServiceAccount", "Role", "Secret"}, rest


def test_once_the_account_exists_the_policy_goes_before_the_rayservice() -> None:
    """An existing BigModel whose policy is missing (deleted by hand, or networkPolicy turned back on) and whose
    RayService changes: its account exists, so nothing would keep a new pod from starting without the policy."""
    kube = OrderedKube()
    reconciler = _reconciler(kube)
    body = kube.put(tiny_bigmodel("tiny"))
    _run(kube, reconciler, body)
    del kube.objects[("NetworkPolicy", "team-a", "tiny-ray")]
    reconciler.state.drop("NetworkPolicy", "team-a", "tiny-ray")
    del kube.objects[("RayService", "team-a", "tiny")]
    reconciler.state.drop("RayService", "team-a", "tiny")
    kube.log.clear()
    _run(kube, reconciler, kube.objects[("BigModel", "team-a", "tiny")])
    assert kube.log[:4] == [
        ("start", "NetworkPolicy"),
        ("end", "NetworkPolicy"),
        ("start", "RayService"),
        ("end", "RayService"),
    ], kube.log


def test_a_refused_network_policy_blocks_the_pods_and_is_retried() -> None:
    kube = OrderedKube(refuse=frozenset({"NetworkPolicy"}))
    body = kube.put(tiny_bigmodel("tiny"))
    reconciler = _reconciler(kube)
    with pytest.raises(AlreadyReportedError):  # the runner retries it with backoff
        _run(kube, reconciler, body)
    ready = get_condition(kube.objects[("BigModel", "team-a", "tiny")]["status"]["conditions"], "Ready") or {}
    assert ready["reason"] == Reason.CHILD_REJECTED and "NetworkPolicy tiny-ray" in ready["message"], ready
    # The RayService was written before the policy, but no pod can be made: its ServiceAccount was not written.
    assert not any(kind == "ServiceAccount" for kind, _, _ in kube.objects), "no Ray pod without its policy"
    assert not any(kind == "Secret" for kind, _, _ in kube.objects)
    kube.refuse = frozenset()
    _run(kube, reconciler, kube.objects[("BigModel", "team-a", "tiny")])
    assert ("NetworkPolicy", "team-a", "tiny-ray") in kube.objects
