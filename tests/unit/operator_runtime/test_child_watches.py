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
