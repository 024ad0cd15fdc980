"""The operator at scale (issue 21): one reconcile's work does not grow with unrelated objects in the cache,
and a resync over unchanged objects runs no reconcile at all (state.py's recorded reads)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bigmodel_operator import naming
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.handlers import Operator
from bigmodel_operator.reconcile.bigmodel_reconcile import BigModelReconciler
from bigmodel_operator.reconcile.finetunejob_reconcile import FineTuneJobReconciler
from bigmodel_operator.reconcile.state import ClusterState

from .conftest import FakeKube, finetunejob, tiny_bigmodel


def _counting(method: str) -> Any:
    """dict.<method>, counting the entries a pass over the dict visits."""

    def counted(self: dict[Any, Any]) -> Any:
        CountingDict.visited += len(self)
        return getattr(super(CountingDict, self), method)()

    return counted


class CountingDict(dict):  # type: ignore[type-arg]
    """A dict that counts the entries every pass over it visits: a scan of the cache shows up here."""

    visited = 0
    __iter__ = _counting("__iter__")
    items = _counting("items")
    keys = _counting("keys")
    values = _counting("values")


def _child(kind: str, name: str, namespace: str, label: str, owner: str, uid: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": "5",
            "labels": naming.labels(label, owner, "x"),
            "ownerReferences": [{"kind": "BigModel", "name": owner, "uid": uid, "controller": True}],
        },
    }


def _unrelated(state: ClusterState, n: int) -> None:
    """n BigModels with children, n FineTuneJobs deploying to them, and their trainer pods, in two namespaces
    (half in the target's)."""
    for i in range(n):
        namespace = "team-a" if i % 2 else "team-b"
        bm = tiny_bigmodel(f"other-{i}", namespace)
        state.put(bm)
        uid = bm["metadata"]["uid"]
        for kind in ("RayService", "NetworkPolicy", "ServiceAccount", "Role", "RoleBinding"):
            state.put(_child(kind, f"other-{i}", namespace, naming.LABEL_BIGMODEL, f"other-{i}", uid))
        state.put(finetunejob(f"other-job-{i}", f"other-{i}", namespace, phase="Running"))
        pod = _child("Pod", f"other-job-{i}-pod", namespace, naming.LABEL_FINETUNEJOB, f"other-job-{i}", uid)
        state.put(pod)


class Work:
    """What one reconcile touched in the cache: keyed reads, index entries, entries visited by scans."""

    def __init__(self, state: ClusterState) -> None:
        self.gets = 0
        self.indexed = 0
        get, bucket = state.get, state._bucket

        def counting_get(*key: str) -> Any:
            self.gets += 1
            return get(*key)

        def counting_bucket(key: Any) -> Any:
            found = bucket(key)
            self.indexed += len(found)
            return found

        state.get = counting_get  # type: ignore[method-assign]
        state._bucket = counting_bucket  # type: ignore[method-assign]


def _one_reconcile(unrelated: int, kind: str) -> tuple[int, int, int, int]:
    """(gets, index entries, scanned entries, API calls) of one BigModel or FineTuneJob reconcile, in steady
    state (second run), with `unrelated` other objects of each kind in the cache."""
    state = ClusterState()
    state._objects = CountingDict()
    _unrelated(state, unrelated)
    kube = FakeKube()
    target = tiny_bigmodel("target")
    state.put(kube.put(target))
    for i in range(2):
        state.put(kube.put(finetunejob(f"job-{i}", "target", phase="Running")))
    state.put(_child("Pod", "job-0-pod", "team-a", naming.LABEL_FINETUNEJOB, "job-0", "x"))
    bigmodels = BigModelReconciler(kube, state, OperatorConfig(), lambda *_: None)  # type: ignore[arg-type]
    jobs = FineTuneJobReconciler(kube, state, OperatorConfig(), lambda *_: None)  # type: ignore[arg-type]
    reconciler = bigmodels if kind == "BigModel" else jobs
    key = (kind, "team-a", "target" if kind == "BigModel" else "job-0")
    asyncio.run(reconciler.run(key))  # creates the children
    work = Work(state)
    CountingDict.visited = 0
    calls = kube.writes()
    asyncio.run(reconciler.run(key))
    return work.gets, work.indexed, CountingDict.visited, kube.writes() - calls


def test_bigmodel_reconcile_work_does_not_grow_with_the_cache() -> None:
    small, large = _one_reconcile(0, "BigModel"), _one_reconcile(1000, "BigModel")
    assert small == large, f"work with 0 vs 1,000 unrelated objects of each kind: {small} vs {large}"
    gets, indexed, scanned, _ = large
    assert scanned == 0, "a reconcile passed over the whole cache"
    assert indexed == 2  # the two FineTuneJobs that deploy to it, from the index
    assert gets < 20


def test_finetunejob_reconcile_work_does_not_grow_with_the_cache() -> None:
    small, large = _one_reconcile(0, "FineTuneJob"), _one_reconcile(1000, "FineTuneJob")
    assert small == large, f"work with 0 vs 1,000 unrelated objects of each kind: {small} vs {large}"
    assert large[2] == 0, "a reconcile passed over the whole cache"
    assert large[1] == 1  # its own trainer pod, from the index


async def settle(operator: Operator, kube: FakeKube, rounds: int = 4) -> None:
    """Deliver what the fake apiserver holds as watch events would, and run what they trigger, until quiet."""
    for _ in range(rounds):
        for (kind, namespace, name), obj in list(kube.objects.items()):
            if kind == "Secret":
                continue  # not watched
            seen = operator.state.get(kind, namespace, name) or {"metadata": {}}
            if seen["metadata"].get("resourceVersion") == obj["metadata"]["resourceVersion"]:
                continue
            operator.state.put(obj)
            labels = obj["metadata"].get("labels") or {}
            if kind in {"BigModel", "FineTuneJob"}:
                operator.trigger(kind, namespace, name)
            elif owner := labels.get(naming.LABEL_BIGMODEL):
                operator.trigger("BigModel", namespace, owner)
            elif owner := labels.get(naming.LABEL_FINETUNEJOB):
                operator.trigger("FineTuneJob", namespace, owner)
        await operator.runner.drain()


async def settled_operator(count: int) -> tuple[FakeKube, Operator]:
    """An operator (on a fake API) that has made the children of `count` tiny BigModels and is idle."""
    kube = FakeKube()
    operator = Operator(OperatorConfig(), kube)  # type: ignore[arg-type]
    for i in range(count):
        operator.state.put(kube.put(tiny_bigmodel(f"m{i:04d}")))
        operator.trigger("BigModel", "team-a", f"m{i:04d}")
    await settle(operator, kube)
    return kube, operator


def test_a_resync_over_unchanged_objects_runs_no_reconcile() -> None:
    count = 300

    async def main() -> None:
        kube, operator = await settled_operator(count)
        assert len([k for k in kube.objects if k[0] == "RayService"]) == count
        ran, writes = sum(operator.stats.count.values()), kube.writes()
        start = time.process_time()
        operator.trigger_all("BigModel")
        cpu = time.process_time() - start
        await operator.runner.drain()
        assert sum(operator.stats.count.values()) == ran, "a resync over settled objects reconciled something"
        assert kube.writes() == writes
        print(f"resync over {count} settled BigModels: {cpu * 1000:.1f} ms CPU")
        # One child changes: that one BigModel (and only it) runs again.
        rayservice = kube.objects[("RayService", "team-a", "m0007")]
        rayservice["status"] = {"numServeEndpoints": 1}
        kube._stamp(rayservice)
        await settle(operator, kube, rounds=1)
        assert sum(operator.stats.count.values()) == ran + 1

    asyncio.run(main())


def _idle_resync_work(count: int) -> tuple[int, int, int]:
    """(settled checks, recorded reads they compare, tasks started) of one resync over `count` settled BigModels."""

    async def main() -> tuple[int, int, int]:
        _, operator = await settled_operator(count)
        checks = compared = 0
        settled = operator.state.settled

        def counting(key: Any) -> bool:
            nonlocal checks, compared
            checks += 1
            reads = operator.state._settled.get(key)
            compared += len(reads.objects) + len(reads.buckets) if reads else 0
            return settled(key)

        operator.state.settled = counting  # type: ignore[method-assign]
        tasks = asyncio.all_tasks()
        operator.trigger_all("BigModel")
        operator.trigger_all("FineTuneJob")
        return checks, compared, len(asyncio.all_tasks() - tasks)

    return asyncio.run(main())


def test_an_idle_resync_costs_a_few_lookups_per_object_and_starts_nothing() -> None:
    """The resync over unchanged objects (handlers._resync every resync_seconds): one settled check per object,
    each comparing the same few recorded versions whatever the cache holds, and no reconcile task at all."""
    small, large = _idle_resync_work(100), _idle_resync_work(1000)
    assert (small[0], large[0]) == (100, 1000), "one settled check per object, no more"
    assert small[1] / 100 == large[1] / 1000 < 12, f"recorded reads compared per object: {small} vs {large}"
    assert small[2] == large[2] == 0, "a resync over settled objects started a task"


def test_what_unsettles_an_object() -> None:
    async def main() -> None:
        kube = FakeKube()
        operator = Operator(OperatorConfig(), kube)  # type: ignore[arg-type]
        for name in ("a", "b"):
            operator.state.put(kube.put(tiny_bigmodel(name)))
            operator.trigger("BigModel", "team-a", name)
        await settle(operator, kube)
        key_a, key_b = ("BigModel", "team-a", "a"), ("BigModel", "team-a", "b")
        assert operator.state.settled(key_a) and operator.state.settled(key_b)
        # A FineTuneJob that deploys to `a` (its index bucket moved): only `a`.
        operator.state.put(finetunejob("j", "a"))
        assert not operator.state.settled(key_a) and operator.state.settled(key_b)
        # A GPU node joining: neither (the tiny model is CPU-only and never asks for GPU products).
        operator.state.set_gpu_node("n1", "NVIDIA-H100-80GB-HBM3")
        assert operator.state.settled(key_b)
        # A child deleted.
        operator.state.drop("RayService", "team-a", "b")
        assert not operator.state.settled(key_b)

    asyncio.run(main())


def test_a_deleted_object_leaves_nothing_behind() -> None:
    """Per-object bookkeeping (runner, cache, indexes, per-uid memory) goes with the object."""
    from bigmodel_operator.handlers import _track

    async def main() -> None:
        kube = FakeKube()
        operator = Operator(OperatorConfig(), kube)  # type: ignore[arg-type]
        bm = kube.put(tiny_bigmodel("gone"))
        operator.state.put(bm)
        operator.state.put(kube.put(finetunejob("gone-job", "gone")))
        operator.trigger("BigModel", "team-a", "gone")
        operator.trigger("FineTuneJob", "team-a", "gone-job")
        await settle(operator, kube)
        assert bm["metadata"]["uid"] in operator.bigmodels.keys_created
        assert operator.remembered() > 0
        for (kind, namespace, name), obj in list(kube.objects.items()):
            if operator.state.get(kind, namespace, name) is not None:
                _track(operator, {"type": "DELETED", "object": obj})  # type: ignore[typeddict-item]
        assert operator.state.kinds() == []
        assert not operator.state._buckets and not operator.state._bucket_versions and not operator.state._settled
        assert not operator.state.written_status
        assert operator.runner.tracked() == 0
        assert not operator.bigmodels.keys_created and not operator.bigmodels.adapter_phases
        assert operator.remembered() == 0  # what bigmodel_operator_remembered_entries reports

    asyncio.run(main())


def test_an_object_deleted_while_its_reconcile_runs_leaves_nothing_behind() -> None:
    """The DELETED event arrives while a reconcile of the object is under way (it waits on the apiserver): what
    that run remembers after the event (settled reads, status written, per-uid memory) must go too."""
    from bigmodel_operator.handlers import _track

    async def main() -> None:
        kube = FakeKube()
        gate = asyncio.Event()
        apply = kube.apply

        async def slow_apply(obj: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
            await gate.wait()
            return await apply(obj, **kwargs)

        kube.apply = slow_apply  # type: ignore[method-assign]
        operator = Operator(OperatorConfig(), kube)  # type: ignore[arg-type]
        bm = kube.put(tiny_bigmodel("racy"))
        operator.state.put(bm)
        operator.trigger("BigModel", "team-a", "racy")
        await asyncio.sleep(0.05)
        assert operator.runner.running == 1  # waiting in its first child write
        kube.objects.pop(("BigModel", "team-a", "racy"))
        _track(operator, {"type": "DELETED", "object": bm})  # type: ignore[typeddict-item]
        gate.set()
        await operator.runner.drain()
        for (kind, namespace, name), obj in list(kube.objects.items()):  # garbage collection of its children
            if operator.state.get(kind, namespace, name) is not None:
                _track(operator, {"type": "DELETED", "object": obj})  # type: ignore[typeddict-item]
        assert operator.remembered() == 0, (operator.state.entries(), operator.bigmodels.entries())

    asyncio.run(main())
