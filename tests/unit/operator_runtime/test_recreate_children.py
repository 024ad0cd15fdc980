"""Delete-and-recreate with the same name (issue 21): children of an earlier object are waited for, orphans
adopted, foreign objects left alone, and the generated API-keys Secret never lost to the 409 race. The same
story on the real apiserver, with garbage collection: tests/integration/controller/test_recreate.py."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from bigmodel_operator import naming
from bigmodel_operator.conditions import Reason, get_condition
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.reconcile.bigmodel_reconcile import BigModelReconciler
from bigmodel_operator.reconcile.children import NotControlledError, OldChildError, check_control
from bigmodel_operator.reconcile.finetunejob_reconcile import FineTuneJobReconciler
from bigmodel_operator.reconcile.runner import RetryLaterError
from bigmodel_operator.reconcile.state import ClusterState

from .conftest import FakeKube, finetunejob, tiny_bigmodel

KEYS = "tiny-api-keys"


def _reconcilers(kube: FakeKube, **config: Any) -> tuple[BigModelReconciler, FineTuneJobReconciler, list[tuple]]:
    state = ClusterState()
    events: list[tuple] = []
    cfg = OperatorConfig(**config)
    emit = lambda body, type_, reason, message: events.append((type_, reason, message))  # noqa: E731
    return (
        BigModelReconciler(kube, state, cfg, emit),  # type: ignore[arg-type]
        FineTuneJobReconciler(kube, state, cfg, emit),  # type: ignore[arg-type]
        events,
    )


def _run(reconciler: Any, body: dict[str, Any]) -> None:
    meta = body["metadata"]
    reconciler.state.put(body)
    asyncio.run(reconciler.run((body["kind"], meta["namespace"], meta["name"])))


def _earlier_children(kube: FakeKube, first: dict[str, Any]) -> None:
    """What the first incarnation left: reconcile it once, then delete it (its children stay for a while)."""
    bm, _, _ = _reconcilers(kube)
    _run(bm, first)
    kube.objects.pop(("BigModel", "team-a", "tiny"))


def _ready(kube: FakeKube) -> dict[str, Any]:
    return get_condition(kube.objects[("BigModel", "team-a", "tiny")]["status"]["conditions"], "Ready") or {}


def test_check_control_tells_earlier_orphaned_and_foreign_children_apart() -> None:
    owner = tiny_bigmodel("tiny")
    child = {
        "kind": "RayService",
        "metadata": {"name": "tiny", "labels": naming.labels(naming.LABEL_BIGMODEL, "tiny", "model-server")},
    }
    ours = copy.deepcopy(child)
    ours["metadata"]["ownerReferences"] = [naming.owner_reference(owner)]
    assert check_control(ours, owner) is True
    earlier = copy.deepcopy(ours)
    earlier["metadata"]["ownerReferences"][0]["uid"] = "uid-of-the-deleted-one"
    with pytest.raises(OldChildError, match="earlier BigModel tiny"):
        check_control(earlier, owner)
    assert check_control(child, owner) is False  # orphaned (`--cascade=orphan`): adopted
    job = {**child, "kind": "Job"}
    with pytest.raises(NotControlledError, match="orphaned, not adopted"):
        check_control(job, owner)
    foreign = {"kind": "RayService", "metadata": {"name": "tiny", "labels": {"app": "theirs"}}}
    with pytest.raises(NotControlledError, match="not controlled by this resource"):
        check_control(foreign, owner)
    other_owner = copy.deepcopy(earlier)
    other_owner["metadata"]["ownerReferences"][0]["name"] = "someone-else"
    with pytest.raises(NotControlledError):
        check_control(other_owner, owner)


def test_a_recreated_bigmodel_waits_for_the_earlier_children_then_converges() -> None:
    kube = FakeKube()
    first = kube.put(tiny_bigmodel("tiny") | {})
    _earlier_children(kube, first)
    second = kube.put({**tiny_bigmodel("tiny"), "metadata": {**tiny_bigmodel("tiny")["metadata"], "uid": "uid-2"}})
    bm, _, events = _reconcilers(kube)
    with pytest.raises(RetryLaterError):
        _run(bm, second)
    ready = _ready(kube)
    assert ready["reason"] == Reason.WAITING_FOR_OLD_CHILDREN, ready
    assert "earlier BigModel tiny" in ready["message"]
    assert ("Normal", Reason.WAITING_FOR_OLD_CHILDREN) in [e[:2] for e in events]
    # Garbage collection removes the earlier children (the cache hears of it through the watch).
    for key in [k for k, o in kube.objects.items() if naming.is_controlled_by(o, first["metadata"]["uid"])]:
        kube.objects.pop(key)
        bm.state.drop(*key)
    second = copy.deepcopy(kube.objects[("BigModel", "team-a", "tiny")])
    _run(bm, second)
    assert _ready(kube)["reason"] == Reason.RAYSERVICE_DEPLOYING
    for kind, name in [("RayService", "tiny"), ("NetworkPolicy", "tiny-ray"), ("Secret", KEYS)]:
        assert naming.is_controlled_by(kube.objects[(kind, "team-a", name)], "uid-2"), kind


def test_orphaned_children_are_adopted() -> None:
    kube = FakeKube()
    first = kube.put(tiny_bigmodel("tiny"))
    _earlier_children(kube, first)
    for obj in kube.objects.values():  # `kubectl delete --cascade=orphan`: GC removed the ownerReferences
        obj["metadata"].pop("ownerReferences", None)
    second = kube.put({**tiny_bigmodel("tiny"), "metadata": {**tiny_bigmodel("tiny")["metadata"], "uid": "uid-2"}})
    bm, _, events = _reconcilers(kube)
    _run(bm, second)
    assert _ready(kube)["reason"] == Reason.RAYSERVICE_DEPLOYING
    assert naming.is_controlled_by(kube.objects[("RayService", "team-a", "tiny")], "uid-2")
    assert ("Normal", "RayServiceAdopted") in [e[:2] for e in events]


def _secret_left_behind(kube: FakeKube, owner_uid: str | None) -> None:
    secret = {
        "kind": "Secret",
        "metadata": {
            "name": KEYS,
            "namespace": "team-a",
            "labels": naming.labels(naming.LABEL_BIGMODEL, "tiny", "api-keys"),
        },
    }
    if owner_uid:
        ref = {"kind": "BigModel", "name": "tiny", "uid": owner_uid, "controller": True}
        secret["metadata"]["ownerReferences"] = [ref]
    kube.put(secret)


def test_the_keys_secret_of_an_earlier_bigmodel_is_waited_for_not_taken_for_ours() -> None:
    """The race of issue 21: create → 409 against the old Secret, which GC then removes. The new BigModel must
    not remember its keys as done until its own Secret exists."""
    kube = FakeKube()
    _secret_left_behind(kube, owner_uid="uid-of-the-deleted-one")
    body = kube.put(tiny_bigmodel("tiny"))
    bm, _, _ = _reconcilers(kube)
    with pytest.raises(RetryLaterError):
        _run(bm, body)
    assert body["metadata"]["uid"] not in bm.keys_created
    assert _ready(kube)["reason"] == Reason.WAITING_FOR_OLD_CHILDREN
    kube.objects.pop(("Secret", "team-a", KEYS))  # collected
    _run(bm, copy.deepcopy(kube.objects[("BigModel", "team-a", "tiny")]))
    secret = kube.objects[("Secret", "team-a", KEYS)]
    assert naming.is_controlled_by(secret, body["metadata"]["uid"])
    assert body["metadata"]["uid"] in bm.keys_created


@pytest.mark.parametrize("owner", [None, "own"])
def test_an_existing_keys_secret_of_the_user_or_ours_is_used_as_it_is(owner: str | None) -> None:
    kube = FakeKube()
    body = kube.put(tiny_bigmodel("tiny"))
    _secret_left_behind(kube, owner_uid=body["metadata"]["uid"] if owner else None)
    before = copy.deepcopy(kube.objects[("Secret", "team-a", KEYS)])
    bm, _, _ = _reconcilers(kube)
    _run(bm, body)
    assert kube.objects[("Secret", "team-a", KEYS)] == before
    assert body["metadata"]["uid"] in bm.keys_created


def test_without_secret_reads_a_conflict_is_retried_for_a_young_bigmodel_only() -> None:
    kube = FakeKube()
    kube.secret_reads_allowed = False
    _secret_left_behind(kube, owner_uid="uid-of-the-deleted-one")
    young = tiny_bigmodel("tiny")
    young["metadata"]["creationTimestamp"] = "2999-01-01T00:00:00Z"  # "now" for the window
    young = kube.put(young)
    bm, _, _ = _reconcilers(kube, check_secrets=False)
    with pytest.raises(RetryLaterError):
        _run(bm, young)
    old = kube.put(tiny_bigmodel("tiny"))  # created long ago: the existing Secret is used as it is
    bm, _, _ = _reconcilers(kube, check_secrets=False)
    _run(bm, old)
    assert old["metadata"]["uid"] in bm.keys_created


def test_a_recreated_finetunejob_waits_for_the_earlier_job() -> None:
    kube = FakeKube()
    kube.put(tiny_bigmodel("tiny"))
    first = kube.put(finetunejob("lora", "tiny"))
    _, ftj, _ = _reconcilers(kube)
    ftj.state.put(kube.objects[("BigModel", "team-a", "tiny")])
    _run(ftj, first)
    assert ("Job", "team-a", "lora-train") in kube.objects
    kube.objects.pop(("FineTuneJob", "team-a", "lora"))
    second = kube.put(
        {**finetunejob("lora", "tiny"), "metadata": {**finetunejob("lora", "tiny")["metadata"], "uid": "u2"}}
    )
    _, ftj, _ = _reconcilers(kube)
    ftj.state.put(kube.objects[("BigModel", "team-a", "tiny")])
    with pytest.raises(RetryLaterError):
        _run(ftj, second)
    status = kube.objects[("FineTuneJob", "team-a", "lora")]["status"]
    complete = get_condition(status["conditions"], "Complete") or {}
    assert complete["reason"] == Reason.WAITING_FOR_OLD_CHILDREN and status["phase"] == "Pending", status
    for key in [k for k, o in kube.objects.items() if naming.is_controlled_by(o, first["metadata"]["uid"])]:
        kube.objects.pop(key)
        ftj.state.drop(*key)
    _run(ftj, copy.deepcopy(kube.objects[("FineTuneJob", "team-a", "lora")]))
    assert naming.is_controlled_by(kube.objects[("Job", "team-a", "lora-train")], "u2")
