"""Carry a BigModel's scaling bounds and tolerations to the RayCluster its RayService runs on.

KubeRay leaves worker `replicas`/`minReplicas`/`maxReplicas` out of the hash that decides whether a
RayService's RayCluster changes (builders/raycluster_bounds.py), so after the RayService is applied the
operator patches the bounds of the clusters the RayService names in its status (the active one, and the
pending one during an upgrade) itself. Tolerations, also outside that hash (builders/raycluster_tolerations.py),
are patched into the cluster's templates the same way, and the cluster's Pending, unscheduled pods of a
changed group are deleted so that KubeRay recreates them with the new tolerations (running pods are left
alone). Only clusters whose controller is that RayService, and pods whose controller is that cluster, are
touched.
Failures never fail the reconcile: they are logged and reported once as a Warning Event, and the next
reconcile (at the latest the periodic resync) tries again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from bigmodel_operator import naming
from bigmodel_operator.builders.raycluster_bounds import bounds_changes, describe, json_patch
from bigmodel_operator.builders.raycluster_tolerations import (
    TolerationsChange,
    is_unscheduled,
    pod_group,
    tolerations_changes,
    tolerations_patch,
)
from bigmodel_operator.kube import ApiError, Kube

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any], str, str, str], None]  # (body, type, reason, message)
SYNCED = "WorkerBoundsSynced"
SYNC_FAILED = "WorkerBoundsSyncFailed"
TOLERATIONS_SYNCED = "TolerationsSynced"
_STATUS_KEYS = ("activeServiceStatus", "pendingServiceStatus")


def _signature(rayservice: dict[str, Any]) -> str:
    """What the rendering asks of the worker groups' bounds (a cluster confirmed to carry it needs no read)."""
    config = (rayservice.get("spec") or {}).get("rayClusterConfig") or {}
    groups = [
        [g.get("groupName"), g.get("replicas"), g.get("minReplicas"), g.get("maxReplicas")]
        for g in config.get("workerGroupSpecs") or []
    ]
    templates = [config.get("headGroupSpec"), *(config.get("workerGroupSpecs") or [])]
    tolerations = [(((g or {}).get("template") or {}).get("spec") or {}).get("tolerations") for g in templates]
    return json.dumps([bool(config.get("enableInTreeAutoscaling")), groups, tolerations])


def cluster_names(rayservice: dict[str, Any] | None) -> list[str]:
    """The RayClusters a RayService's status names: active first, then pending."""
    status = (rayservice or {}).get("status") or {}
    names = [((status.get(key) or {}).get("rayClusterName") or "") for key in _STATUS_KEYS]
    return [name for i, name in enumerate(names) if name and name not in names[:i]]


class WorkerBoundsSync:
    """Patches RayCluster worker bounds; remembers clusters already in line, so idle resyncs read nothing."""

    def __init__(self, kube: Kube, emit: EventSink) -> None:
        self.kube = kube
        self.emit = emit
        self._in_line: dict[tuple[str, str, str], str] = {}  # (namespace, cluster, RayService uid) -> signature
        self._warned: dict[tuple[str, str, str], str] = {}  # the last Warning posted per cluster

    def entries(self) -> int:
        return len(self._in_line) + len(self._warned)

    def forget(self, rayservice_uid: str) -> None:
        """Drop what is remembered about the clusters of a RayService that is gone."""
        for table in (self._in_line, self._warned):
            for key in [k for k in table if k[2] == rayservice_uid]:
                del table[key]

    async def sync(self, body: dict[str, Any], desired: dict[str, Any], live: dict[str, Any] | None) -> None:
        """Bring the clusters `live` (the applied RayService) names to `desired`'s worker bounds."""
        owner_uid = ((live or {}).get("metadata") or {}).get("uid")
        if not owner_uid:
            return
        namespace = desired["metadata"]["namespace"]
        signature = _signature(desired)
        names = cluster_names(live)
        for gone in [k for k in self._in_line if k[0] == namespace and k[2] == owner_uid and k[1] not in names]:
            del self._in_line[gone]  # a cluster KubeRay replaced
        for name in names:
            key = (namespace, name, owner_uid)
            if self._in_line.get(key) == signature:
                continue
            try:
                if await self._sync_one(body, desired, namespace, name, owner_uid):
                    self._in_line[key] = signature
                self._warned.pop(key, None)
            except (ApiError, aiohttp.ClientError, TimeoutError) as error:
                if isinstance(error, ApiError) and error.status == 404:
                    continue  # KubeRay may be replacing the cluster; the next one is created with the new bounds
                self._warn(body, key, f"could not update the worker bounds of RayCluster {name}: {error}")

    async def _sync_one(
        self, body: dict[str, Any], desired: dict[str, Any], namespace: str, name: str, uid: str
    ) -> bool:
        """Patch one cluster if it needs it; False when it is not ours to touch (or gone)."""
        cluster = await self.kube.get("RayCluster", namespace, name)
        if cluster is None:
            return False
        if not naming.is_controlled_by(cluster, uid):
            log.debug("RayCluster %s/%s is not controlled by RayService uid %s: not touching it", namespace, name, uid)
            return False
        changes = bounds_changes(desired, cluster)
        tolerations = tolerations_changes(desired, cluster)
        if changes or tolerations:
            ops = json_patch(changes, cluster) + tolerations_patch(tolerations)
            await self.kube.json_patch("RayCluster", namespace, name, ops)
        if changes:
            message = f"Updated the worker bounds of RayCluster {name}: {describe(changes)}"
            log.info("%s/%s: %s", namespace, body["metadata"]["name"], message)
            self.emit(body, "Normal", SYNCED, message)
        if tolerations:
            recreated = await self._recreate_unscheduled(cluster, tolerations)
            groups = ", ".join(change.group for change in tolerations)
            message = (
                f"Updated the tolerations of RayCluster {name} ({groups}); recreated {recreated} Pending "
                "unscheduled pod(s) with them; running pods keep theirs until they are replaced"
            )
            log.info("%s/%s: %s", namespace, body["metadata"]["name"], message)
            self.emit(body, "Normal", TOLERATIONS_SYNCED, message)
        return True

    async def _recreate_unscheduled(self, cluster: dict[str, Any], changes: list[TolerationsChange]) -> int:
        """Delete the cluster's Pending, unscheduled pods of the changed groups; KubeRay recreates them from
        the patched templates. Returns how many were deleted."""
        meta = cluster["metadata"]
        groups = {change.group for change in changes}
        pods = await self.kube.list("Pod", meta["namespace"], f"ray.io/cluster={meta['name']}")
        deleted = 0
        for pod in pods:
            if not is_unscheduled(pod) or pod_group(pod) not in groups:
                continue
            if not naming.is_controlled_by(pod, meta.get("uid", "")):
                continue
            try:
                await self.kube.delete("Pod", meta["namespace"], pod["metadata"]["name"], pod["metadata"].get("uid"))
                deleted += 1
            except ApiError as error:
                if error.status not in (404, 409):  # gone, or replaced meanwhile (uid precondition)
                    raise
        return deleted

    def _warn(self, body: dict[str, Any], key: tuple[str, str, str], message: str) -> None:
        log.warning("%s/%s: %s", key[0], body["metadata"]["name"], message)
        if self._warned.get(key) != message:  # once per distinct failure, not at every resync
            self._warned[key] = message
            self.emit(body, "Warning", SYNC_FAILED, message)
