"""Bring a running RayCluster's pod tolerations to what the rendered RayService asks for.

KubeRay (v1.6) leaves the head's and every worker group's `tolerations` (and scheduling gates) out of the
hash that decides whether a RayService's RayCluster changes (`GenerateHashWithoutReplicasAndWorkersToDelete`:
queueing controllers such as Kueue inject them). An edit of a BigModel's `spec.tolerations` therefore changes
the RayService and nothing else: the pods, typically Pending on a taint the user is trying to tolerate, stay
Pending. The operator adds the missing ones to the live RayCluster's templates (so KubeRay creates new pods
with them) and recreates the cluster's Pending, unscheduled pods of the changed groups
(reconcile/raycluster_sync.py); running pods keep theirs until they are replaced. It only adds: the
tolerations KubeRay mutes are the ones queueing controllers inject, which must stay, and a toleration the
user removed only widens where pods may go until KubeRay next replaces the cluster. This module computes
the patch, purely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HEAD = "head"


@dataclass(frozen=True)
class TolerationsChange:
    """One pod template whose tolerations differ: `group` is `head` or a worker group's name."""

    group: str
    path: str  # JSON pointer of the template's pod spec
    guard: dict[str, Any] | None  # a `test` op that pins the worker group's index to its name
    present: bool  # the live template has a `tolerations` key
    new: list[dict[str, Any]]


def _tolerations(template: Any) -> list[dict[str, Any]]:
    spec = (template or {}).get("spec") if isinstance(template, dict) else None
    items = (spec or {}).get("tolerations") if isinstance(spec, dict) else None
    return [t for t in items or [] if isinstance(t, dict)]


def _normal(tolerations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Empty fields dropped (`operator: ""` means Equal), so a round trip through the apiserver compares equal."""
    return [{k: v for k, v in t.items() if v not in (None, "")} for t in tolerations]


def _has_key(template: Any) -> bool:
    spec = (template or {}).get("spec") if isinstance(template, dict) else None
    return isinstance(spec, dict) and "tolerations" in spec


def _missing(wanted: list[dict[str, Any]], live: list[dict[str, Any]]) -> list[dict[str, Any]]:
    have = _normal(live)
    return [t for t, n in zip(wanted, _normal(wanted), strict=True) if n not in have]


def _change(
    group: str, path: str, guard: dict[str, Any] | None, template: Any, wanted: list
) -> TolerationsChange | None:
    live = _tolerations(template)
    missing = _missing(wanted, live)
    return TolerationsChange(group, path, guard, _has_key(template), live + missing) if missing else None


def tolerations_changes(rayservice: dict[str, Any], raycluster: dict[str, Any]) -> list[TolerationsChange]:
    """The live templates (head, then worker groups matched by name) that lack rendered tolerations, each
    with its live list plus the missing ones. Groups only one side has are skipped: KubeRay handles added or
    renamed groups itself."""
    config = (rayservice.get("spec") or {}).get("rayClusterConfig") or {}
    live = raycluster.get("spec") or {}
    changes: list[TolerationsChange | None] = []
    head_live = (live.get("headGroupSpec") or {}).get("template")
    if isinstance(head_live, dict):
        wanted = _tolerations((config.get("headGroupSpec") or {}).get("template"))
        changes.append(_change(HEAD, "/spec/headGroupSpec/template/spec", None, head_live, wanted))
    rendered = {
        g["groupName"]: g for g in config.get("workerGroupSpecs") or [] if isinstance(g, dict) and "groupName" in g
    }
    for index, group in enumerate(live.get("workerGroupSpecs") or []):
        if not isinstance(group, dict) or group.get("groupName") not in rendered:
            continue
        template = group.get("template")
        if isinstance(template, dict):
            wanted = _tolerations(rendered[group["groupName"]].get("template"))
            base = f"/spec/workerGroupSpecs/{index}"
            guard = {"op": "test", "path": f"{base}/groupName", "value": group["groupName"]}
            changes.append(_change(group["groupName"], f"{base}/template/spec", guard, template, wanted))
    return [change for change in changes if change is not None]


def tolerations_patch(changes: list[TolerationsChange]) -> list[dict[str, Any]]:
    """RFC 6902 operations for `changes` (worker groups guarded by a `test` of their name)."""
    ops: list[dict[str, Any]] = []
    for change in changes:
        if change.guard:
            ops.append(change.guard)
        verb = "replace" if change.present else "add"
        ops.append({"op": verb, "path": f"{change.path}/tolerations", "value": change.new})
    return ops


def pod_group(pod: dict[str, Any]) -> str | None:
    """`head` or the worker group of a Ray pod, from KubeRay's labels."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if labels.get("ray.io/node-type") == "head":
        return HEAD
    group = labels.get("ray.io/group")
    return group if isinstance(group, str) else None


def is_unscheduled(pod: dict[str, Any]) -> bool:
    """Pending and not bound to a node: nothing runs yet, so recreating it loses nothing."""
    return (pod.get("status") or {}).get("phase") == "Pending" and not (pod.get("spec") or {}).get("nodeName")
