"""ownership_upgrade (reconcile/children.py): a child we created with a POST carries our manager's Update entry; the
first update turns it into an Apply entry so that the apply owns, and can drop, every field it created."""

from __future__ import annotations

from typing import Any

from bigmodel_operator.config import FIELD_MANAGER
from bigmodel_operator.reconcile.children import ownership_upgrade


def _child(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "c", "managedFields": list(entries)}}


def _entry(manager: str, operation: str, **more: str) -> dict[str, Any]:
    return {"manager": manager, "operation": operation, **more}


def test_our_post_entry_becomes_an_apply() -> None:
    child = _child(_entry("kuberay-operator", "Update", subresource="status"), _entry(FIELD_MANAGER, "Update"))
    assert ownership_upgrade(child) == [
        {"op": "test", "path": "/metadata/managedFields/1/manager", "value": FIELD_MANAGER},
        {"op": "test", "path": "/metadata/managedFields/1/operation", "value": "Update"},
        {"op": "replace", "path": "/metadata/managedFields/1/operation", "value": "Apply"},
    ]


def test_nothing_to_turn() -> None:
    assert ownership_upgrade(_child()) is None
    assert ownership_upgrade({"metadata": {"name": "c"}}) is None
    assert ownership_upgrade(_child(_entry(FIELD_MANAGER, "Apply"))) is None  # applied once already
    assert ownership_upgrade(_child(_entry(FIELD_MANAGER, "Apply"), _entry(FIELD_MANAGER, "Update"))) is None
    assert ownership_upgrade(_child(_entry("kubectl", "Update"))) is None  # someone else's
    assert ownership_upgrade(_child(_entry(FIELD_MANAGER, "Update", subresource="status"))) is None
