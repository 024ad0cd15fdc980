"""Create or update one child with server-side apply, only when its spec hash changed and we control it.

A child with our name that we do not control is one of three things:
- left by an earlier object of the same kind and name (`kubectl delete` + `apply`, a Helm reinstall, a
  GitOps prune): its controller reference names our kind and name with another uid. Garbage collection
  removes it soon (or it is being deleted): `OldChildError`, the reconcile waits (WaitingForOldChildren)
  and runs again on the child's deletion event or after a backoff.
- orphaned by `kubectl delete --cascade=orphan` of an earlier object: no controller at all, and our labels
  for this owner. It is adopted (our apply adds our controller reference), as a ReplicaSet adopts pods.
  Jobs are not adopted: an old Job ran an old spec, and a Job's template cannot change.
- anything else (another controller's, or a user's): `NotControlledError`, never touched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from bigmodel_operator import naming
from bigmodel_operator.config import FIELD_MANAGER
from bigmodel_operator.kube import ApiError, JsonPatch, Kube
from bigmodel_operator.reconcile.state import OWNER_LABELS, ClusterState

NOT_ADOPTED = frozenset({"Job"})


class AlreadyReportedError(Exception):
    """A reconcile failure whose condition and Event are already written; raised only so that the
    runner retries it with backoff."""


class NotControlledError(Exception):
    """A child with our name exists but another controller (or a user) owns it: we leave it alone."""


class OldChildError(Exception):
    """A child with our name is still owned by an earlier object of our kind and name (being collected)."""


@dataclass
class ApplyResult:
    body: dict[str, Any]
    action: str  # "created", "updated", "adopted" or "unchanged"

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


def controller_of(child: dict[str, Any]) -> dict[str, Any] | None:
    """The child's controller ownerReference, if any."""
    refs = child.get("metadata", {}).get("ownerReferences") or []
    return next((ref for ref in refs if ref.get("controller")), None)


def check_control(child: dict[str, Any], owner: dict[str, Any]) -> bool:
    """Whether we may write `child` for `owner`: True when we control it, False when it is an orphan of an
    earlier `owner` to adopt; raises OldChildError or NotControlledError otherwise (module docstring)."""
    meta = owner["metadata"]
    kind, name = child["kind"], child["metadata"]["name"]
    ref = controller_of(child)
    if ref is not None and ref.get("uid") == meta["uid"]:
        return True
    if ref is not None and ref.get("kind") == owner["kind"] and ref.get("name") == meta["name"]:
        deleting = " (being deleted)" if child["metadata"].get("deletionTimestamp") else ""
        raise OldChildError(
            f"{kind} {name}{deleting} still belongs to an earlier {owner['kind']} {meta['name']} "
            f"(uid {ref.get('uid')}); waiting for garbage collection to remove it"
        )
    labels = child["metadata"].get("labels") or {}
    owner_label = next((label for label, k in OWNER_LABELS.items() if k == owner["kind"]), None)
    ours = labels.get(naming.LABEL_MANAGED_BY) == naming.MANAGED_BY and labels.get(owner_label or "") == meta["name"]
    if ref is None and ours and kind not in NOT_ADOPTED and not child["metadata"].get("deletionTimestamp"):
        return False
    if ref is None and ours:
        raise NotControlledError(
            f"{kind} {name} was left by an earlier {owner['kind']} {meta['name']} (orphaned, not adopted); "
            f"delete it to let this one create its own"
        )
    raise NotControlledError(f"{kind} {name} exists and is not controlled by this resource; not touching it")


async def ensure_child(
    kube: Kube, state: ClusterState, desired: dict[str, Any], owner: dict[str, Any], *, create_only: bool = False
) -> ApplyResult:
    """Apply `desired` unless the live child already carries the same spec hash.

    create_only: never update an existing child (a Job's pod template is immutable).
    A child the watch cache does not hold is created in one round trip (`Kube.apply(if_absent=True)`): only
    when one of that name exists after all (a user's, or one the watch has not delivered yet) is it read and
    checked like a cached one.
    """
    meta = desired["metadata"]
    kind, namespace, name = desired["kind"], meta["namespace"], meta["name"]
    current = state.get(kind, namespace, name)
    if current is None:
        try:
            created = await kube.apply(desired, if_absent=True)
        except ApiError as error:
            if error.status != 409:
                raise
            current = await kube.get(kind, namespace, name)
            if current is not None:
                state.put(current)
        else:
            state.put(created)
            return ApplyResult(created, "created")
    action = "created"
    if current is not None:
        controlled = check_control(current, owner)
        if controlled and (create_only or _hash_of(current) == _hash_of(desired)):
            return ApplyResult(current, "unchanged")
        action = "updated" if controlled else "adopted"
        await _upgrade_ownership(kube, current)
    applied = await kube.apply(desired)
    state.put(applied)
    return ApplyResult(applied, action)


def ownership_upgrade(child: dict[str, Any]) -> JsonPatch | None:
    """The JSON patch that turns our field manager's Update entry into an Apply one, or None when there is none
    to turn. A child we created is a POST's (Kube.apply(if_absent=True)), and the apiserver records a POST's
    fields as an Update: an apply under the same manager name is another manager to it, so a field the apply
    no longer sets would stay, owned by the Update. With the entry turned into our Apply's (what kubectl's
    client-side-to-server-side upgrade does), the apply owns every field it created and drops those it omits.
    The `test` ops make the patch fail, and change nothing, when managedFields moved since `child` was read."""
    entries = child["metadata"].get("managedFields") or []
    ours = [(i, e) for i, e in enumerate(entries) if e.get("manager") == FIELD_MANAGER and not e.get("subresource")]
    updates = [i for i, e in ours if e.get("operation") == "Update"]
    if len(updates) != 1 or any(e.get("operation") == "Apply" for _, e in ours):
        return None  # already applied once (ours is an Apply), or not a shape we created
    at = f"/metadata/managedFields/{updates[0]}"
    return [
        {"op": "test", "path": f"{at}/manager", "value": FIELD_MANAGER},
        {"op": "test", "path": f"{at}/operation", "value": "Update"},
        {"op": "replace", "path": f"{at}/operation", "value": "Apply"},
    ]


async def _upgrade_ownership(kube: Kube, current: dict[str, Any]) -> None:
    """Before the first apply to a child we created: `ownership_upgrade`, read again once if the cached copy was
    stale (its `test` failed)."""
    meta = current["metadata"]
    kind, namespace, name = current["kind"], meta.get("namespace"), meta["name"]
    for attempt in range(2):
        ops = ownership_upgrade(current)
        if ops is None:
            return
        try:
            await kube.json_patch(kind, namespace, name, ops)
            return
        except ApiError as error:
            if error.status != 422 or attempt:
                raise
        current = await kube.get(kind, namespace, name) or {"metadata": {}}


def check_cached(state: ClusterState, desired: list[dict[str, Any]], owner: dict[str, Any]) -> None:
    """`check_control` for every desired child the cache holds, before any write: a child left by an earlier
    owner of the same name (or one we do not control) stops the whole pass before it writes anything beside it.
    The watch caches every child we labelled; one it does not hold is found by its create's 409 (ensure_child)."""
    for child in desired:
        meta = child["metadata"]
        current = state.get(child["kind"], meta["namespace"], meta["name"])
        if current is not None:
            check_control(current, owner)


async def first_failure(*steps: Awaitable[Any]) -> list[Any]:
    """Run independent steps at once (a reconcile then waits for one round trip instead of one per step); once
    all have finished, raise the first failure in argument order, so the outcome does not depend on timing."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)


async def ensure_children(
    kube: Kube, state: ClusterState, desired: list[dict[str, Any]], owner: dict[str, Any]
) -> list[ApplyResult]:
    """`ensure_child` for children that do not depend on each other, all at once — except RoleBindings, which
    go after the Roles: the apiserver checks a binding against its Role (RBAC escalation), and a binding written
    before its Role exists is refused with 404 for an operator that may not `bind` (the chart's account)."""
    first = [i for i, d in enumerate(desired) if d.get("kind") != "RoleBinding"]
    later = [i for i, d in enumerate(desired) if d.get("kind") == "RoleBinding"]
    results: dict[int, ApplyResult] = {}
    for batch in (first, later):
        done = await first_failure(*(ensure_child(kube, state, desired[i], owner) for i in batch))
        results.update(zip(batch, done, strict=True))
    return [results[i] for i in range(len(desired))]


async def remove_child(kube: Kube, state: ClusterState, kind: str, namespace: str, name: str, owner_uid: str) -> bool:
    """Delete a child we no longer want, only if we control it. Returns whether one was deleted."""
    current = state.get(kind, namespace, name) or await kube.get(kind, namespace, name)
    if current is None or not naming.is_controlled_by(current, owner_uid):
        return False
    await kube.delete(kind, namespace, name, uid=current["metadata"].get("uid"))
    state.drop(kind, namespace, name)
    return True
