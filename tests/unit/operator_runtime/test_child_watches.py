"""The operator watches every kind it creates (a child's deletion wakes its owner at once)."""

from __future__ import annotations

from kopf._core.intents import registries

from bigmodel_operator import handlers


def test_every_child_resource_has_a_watch_with_the_managed_selector() -> None:
    watches = {h.id: h for h in registries.get_default_registry()._watching.get_all_handlers()}
    for group, version, plural in handlers.CHILD_RESOURCES:
        handler = watches[f"child_event/{plural}"]
        assert (handler.selector.group, handler.selector.version, handler.selector.any_name) == (group, version, plural)
        assert handler.labels == handlers.MANAGED and handler.fn is handlers.child_event
    assert watches["child_event/trainer-pods"].labels == {**handlers.MANAGED, "app.kubernetes.io/component": "trainer"}


def test_no_handler_needs_kopfs_diff_base_so_it_is_off() -> None:
    """handlers.NoDiffBase skips kopf's per-event essence and diff (two deep copies of every body it sees: most of
    kopf's CPU per watch event, issue 21). Sound only while no handler detects changes (on.create/update/resume/
    field) or spawns daemons/timers: those read the diff and the stored last-handled state."""
    import kopf

    registry = registries.get_default_registry()
    assert not list(registry._changing.get_all_handlers())
    assert not list(registry._spawning.get_all_handlers())
    settings = kopf.OperatorSettings()
    handlers.tune_kopf(settings)
    storage = settings.persistence.diffbase_storage
    body = kopf.Body({"metadata": {"name": "x", "annotations": {"a": "b"}}, "spec": {"x": 1}})
    assert isinstance(storage, handlers.NoDiffBase)
    assert storage.fetch(body=body) is None and storage.build(body=body) is None
    assert not settings.posting.enabled


def test_the_echo_of_our_own_child_write_wakes_no_reconcile() -> None:
    """A child's watch event that brings the version the cache holds already (ensure_child stored the apply's
    answer) changes nothing its owner reads: no reconcile (issue 21: one pass fewer per child write in a burst).
    A new version, a deletion, or an owner waiting for the cluster (RetryLater) still wake it."""
    import asyncio
    import copy

    from bigmodel_operator.config import OperatorConfig

    from .conftest import FakeKube, tiny_bigmodel

    async def main() -> None:
        kube = FakeKube()
        operator = handlers.Operator(OperatorConfig(), kube)  # type: ignore[arg-type]
        operator.state.put(kube.put(tiny_bigmodel("m")))
        operator.trigger("BigModel", "team-a", "m")
        await operator.runner.drain()
        woken: list[tuple[str, str, str]] = []
        operator.trigger = lambda *key: woken.append(key)  # type: ignore[method-assign]
        memo = {"operator": operator}
        rayservice = copy.deepcopy(kube.objects[("RayService", "team-a", "m")])
        await handlers.child_event({"type": "ADDED", "object": rayservice}, memo)  # type: ignore[typeddict-item]
        assert woken == []
        owner = ("BigModel", "team-a", "m")
        operator.runner._waits[owner] = 1
        await handlers.child_event({"type": "MODIFIED", "object": rayservice}, memo)  # type: ignore[typeddict-item]
        assert woken == [owner]
        operator.runner._waits.clear()
        newer = copy.deepcopy(rayservice)
        newer["metadata"]["resourceVersion"] = "99999"
        newer["status"] = {"serviceStatus": "Running"}
        await handlers.child_event({"type": "MODIFIED", "object": newer}, memo)  # type: ignore[typeddict-item]
        assert woken == [owner] * 2
        assert operator.state.get("RayService", "team-a", "m")["status"] == {"serviceStatus": "Running"}  # type: ignore[index]
        await handlers.child_event({"type": "DELETED", "object": newer}, memo)  # type: ignore[typeddict-item]
        assert woken == [owner] * 3 and operator.state.get("RayService", "team-a", "m") is None

    asyncio.run(main())
