"""Create or update one child with server-side apply, only when its spec hash changed and we control it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bigmodel_operator import naming
from bigmodel_operator.kube import Kube
from bigmodel_operator.reconcile.state import ClusterState


class AlreadyReportedError(Exception):
    """A reconcile failure whose condition and Event are already written; raised only so that the
    runner retries it with backoff."""


class NotControlledError(Exception):
    """A child with our name exists but another controller owns it: we leave it alone."""


@dataclass
class ApplyResult:
    body: dict[str, Any]
    action: str  # "created", "updated" or "unchanged"

    def event(self) -> tuple[str, str] | None:
        """(reason, message) of the Event announcing this change, e.g. ("RayServiceCreated", "Created RayService x")."""
        if self.action == "unchanged":
            return None
        verb, kind = self.action.capitalize(), self.body["kind"]
        return f"{kind}{verb}", f"{verb} {kind} {self.body['metadata']['name']}"


def _hash_of(body: dict[str, Any] | None) -> str | None:
    if not body:
        return None
    annotations: dict[str, str] = body.get("metadata", {}).get("annotations") or {}
    return annotations.get(naming.ANNOTATION_SPEC_HASH)


async def ensure_child(
    kube: Kube, state: ClusterState, desired: dict[str, Any], owner_uid: str, *, create_only: bool = False
) -> ApplyResult:
    """Apply `desired` unless the live child already carries the same spec hash.

    create_only: never update an existing child (a Job's pod template is immutable).
    """
    meta = desired["metadata"]
    kind, namespace, name = desired["kind"], meta["namespace"], meta["name"]
    current = state.get(kind, namespace, name)
    if current is None:
        current = await kube.get(kind, namespace, name)
        if current is not None:
            state.put(current)
    if current is not None and not naming.is_controlled_by(current, owner_uid):
        raise NotControlledError(f"{kind} {name} exists and is not controlled by this resource; not touching it")
    if current is not None and (create_only or _hash_of(current) == _hash_of(desired)):
        return ApplyResult(current, "unchanged")
    applied = await kube.apply(desired)
    state.put(applied)
    return ApplyResult(applied, "updated" if current is not None else "created")


async def remove_child(kube: Kube, state: ClusterState, kind: str, namespace: str, name: str, owner_uid: str) -> bool:
    """Delete a child we no longer want, only if we control it. Returns whether one was deleted."""
    current = state.get(kind, namespace, name) or await kube.get(kind, namespace, name)
    if current is None or not naming.is_controlled_by(current, owner_uid):
        return False
    await kube.delete(kind, namespace, name, uid=current["metadata"].get("uid"))
    state.drop(kind, namespace, name)
    return True
