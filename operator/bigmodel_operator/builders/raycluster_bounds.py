"""Bring a running RayCluster's worker-group bounds to what the rendered RayService asks for.

KubeRay (v1.6) decides whether a RayService's RayCluster must change from a hash of the cluster spec that
leaves out each worker group's `replicas`, `minReplicas` and `maxReplicas`
(`GenerateHashWithoutReplicasAndWorkersToDelete`). An edit of only `spec.scaling` therefore changes the
RayService but neither updates the running RayCluster nor prepares a new one, and the Ray autoscaler keeps
scaling inside the old bounds. The operator closes that gap with a JSON patch (RFC 6902) of the live
RayCluster; this module computes it, purely, from the two objects.

`replicas` is the Ray autoscaler's to move while it is on: it is patched only when it lies outside the new
[min, max] (clamped to the nearer bound). A group whose bounds are equal (fixed `spec.scaling.replicas` of
1 or more renders min == max) gets exactly that many. With the autoscaler off, the rendered `replicas` is
the desired count and is patched whenever it differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BOUND_FIELDS = ("minReplicas", "maxReplicas", "replicas")


@dataclass(frozen=True)
class GroupChange:
    """The fields of one worker group that differ: old (None when absent) and new values."""

    index: int
    group: str
    old: dict[str, Any] = field(default_factory=dict)
    new: dict[str, int] = field(default_factory=dict)


def _plain_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _rendered_groups(rayservice: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], bool]:
    """Rendered worker groups by name, and whether the in-tree autoscaler is on."""
    config = (rayservice.get("spec") or {}).get("rayClusterConfig") or {}
    groups = {
        g["groupName"]: g for g in config.get("workerGroupSpecs") or [] if isinstance(g, dict) and "groupName" in g
    }
    return groups, bool(config.get("enableInTreeAutoscaling"))


def _wanted(rendered: dict[str, Any], live: dict[str, Any], autoscaling: bool) -> dict[str, int]:
    """The bound fields this live group should carry (only those the rendering sets)."""
    low, high = _plain_int(rendered.get("minReplicas")), _plain_int(rendered.get("maxReplicas"))
    wanted: dict[str, int] = {}
    if low is not None:
        wanted["minReplicas"] = low
    if high is not None:
        wanted["maxReplicas"] = high
    rendered_replicas = _plain_int(rendered.get("replicas"))
    current = _plain_int(live.get("replicas"))
    if not autoscaling or (low is not None and low == high):
        if rendered_replicas is not None:
            wanted["replicas"] = rendered_replicas
    elif current is not None and low is not None and high is not None and low <= high:
        wanted["replicas"] = _clamp(current, low, high)
    return wanted


def bounds_changes(rayservice: dict[str, Any], raycluster: dict[str, Any]) -> list[GroupChange]:
    """Per live worker group (matched by groupName), the bound fields that differ from the rendering.

    Groups only one side has are skipped: a renamed or added group changes KubeRay's hash, and KubeRay
    then updates or replaces the cluster itself.
    """
    rendered_groups, autoscaling = _rendered_groups(rayservice)
    changes = []
    live_groups = (raycluster.get("spec") or {}).get("workerGroupSpecs") or []
    for index, live in enumerate(live_groups):
        if not isinstance(live, dict) or not isinstance(live.get("groupName"), str):
            continue
        if live["groupName"] not in rendered_groups:
            continue
        wanted = _wanted(rendered_groups[live["groupName"]], live, autoscaling)
        old = {k: live.get(k) for k in BOUND_FIELDS if k in wanted and _plain_int(live.get(k)) != wanted[k]}
        if old:
            new = {k: wanted[k] for k in BOUND_FIELDS if k in old}
            changes.append(GroupChange(index, live["groupName"], old, new))
    return changes


def json_patch(changes: list[GroupChange], raycluster: dict[str, Any]) -> list[dict[str, Any]]:
    """RFC 6902 operations for `changes`: each group's index is guarded by a `test` of its groupName, so
    a concurrent reorder of the groups makes the whole patch fail instead of changing the wrong group."""
    live_groups = (raycluster.get("spec") or {}).get("workerGroupSpecs") or []
    ops: list[dict[str, Any]] = []
    for change in changes:
        base = f"/spec/workerGroupSpecs/{change.index}"
        ops.append({"op": "test", "path": f"{base}/groupName", "value": change.group})
        for key, value in change.new.items():
            verb = "replace" if key in live_groups[change.index] else "add"
            ops.append({"op": verb, "path": f"{base}/{key}", "value": value})
    return ops


def describe(changes: list[GroupChange]) -> str:
    """'cpu-workers: minReplicas 1 → 2, maxReplicas 2 → 4' (groups joined by '; ')."""
    parts = []
    for change in changes:
        fields = ", ".join(f"{k} {_show(change.old[k])} → {v}" for k, v in change.new.items())
        parts.append(f"{change.group}: {fields}")
    return "; ".join(parts)


def _show(value: Any) -> str:
    return "unset" if value is None else str(value)
