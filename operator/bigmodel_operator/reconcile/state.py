"""What the operator has seen of the cluster, fed by kopf watch events; no API calls here.

Every lookup a reconcile makes is a dict access or an index bucket, never a pass over the whole cache:
children by their owner's label, FineTuneJobs by the BigModel they deploy to, objects by kind. A
reconcile runs inside `recording()`: each read notes the version it saw, so `settled(key)` can tell in
a few dict lookups whether running it again could change anything (nothing it read moved, it made no
API call, no deadline passed). That is what makes a resync over a thousand unchanged objects cost
milliseconds instead of a thousand reconciles.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from bigmodel_operator import naming
from bigmodel_operator.status.startup_phases import PodRecord

Key = tuple[str, str, str]  # (kind, namespace, name)
Bucket = tuple[str, str, str]  # (index, namespace, value): ("Pod of FineTuneJob", ns, owner), ("deploying", ns, bm)
ENDED_POD_KEEP_S = 3600.0
SLIM_KINDS = frozenset(
    {"RayService", "Ingress", "NetworkPolicy", "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Job", "Pod"}
)
OWNER_LABELS = {naming.LABEL_BIGMODEL: "BigModel", naming.LABEL_FINETUNEJOB: "FineTuneJob"}
"""A child names its owner in a label (and in its ownerReference); the label is what the index keys on."""


@dataclass
class Reads:
    """What one reconcile read from the cache, and what it did outside it."""

    objects: dict[Key, str | None] = field(default_factory=dict)  # resourceVersion seen (None: absent)
    buckets: dict[Bucket, int] = field(default_factory=dict)  # an index bucket's version when read
    gpu: int | None = None  # version of the GPU products when read
    outside: int = 0  # API calls (reads or writes) and other inputs outside the cache: not settled
    until: float | None = None  # wall-clock time at which the outcome may change on its own


_recording: ContextVar[Reads | None] = ContextVar("bigmodel_reads", default=None)


def note_outside(_method: str = "") -> None:
    """The running reconcile (if any) used something the cache does not hold (an API call: Kube's request
    hook; a failed Hub download): its outcome is not settled."""
    reads = _recording.get()
    if reads is not None:
        reads.outside += 1


def note_deadline(at: float) -> None:
    """The running reconcile's outcome depends on the clock: it must run again at `at` (time.time())."""
    reads = _recording.get()
    if reads is not None:
        reads.until = at if reads.until is None else min(reads.until, at)


def _version(body: dict[str, Any] | None) -> str | None:
    return None if body is None else str(body["metadata"].get("resourceVersion", ""))


@dataclass
class ClusterState:
    """Latest bodies of our resources and children, GPU products on nodes, and what we last wrote."""

    gpu_nodes: dict[str, str] = field(default_factory=dict)  # node name -> nvidia.com/gpu.product
    written_status: dict[Key, dict[str, Any]] = field(default_factory=dict)
    _objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    _kinds: dict[str, dict[tuple[str, str], None]] = field(default_factory=dict)  # kind -> (ns, name), ordered
    _buckets: dict[Bucket, set[Key]] = field(default_factory=dict)
    _bucket_versions: dict[Bucket, int] = field(default_factory=dict)  # bucket -> _changes at its last change
    _changes: int = 0
    _gpu_version: int = 0
    _settled: dict[Key, Reads] = field(default_factory=dict)
    # (namespace, BigModel) -> pod name -> the Ray pod's times and resources (cold starts, cost); pods that
    # ended stay an hour, so the cost account counts their last interval.
    model_pods: dict[tuple[str, str], dict[str, PodRecord]] = field(default_factory=dict)

    def put_model_pod(self, namespace: str, bigmodel: str, record: PodRecord) -> None:
        pods = self.model_pods.setdefault((namespace, bigmodel), {})
        pods[record.name] = record
        horizon = record.ended or record.created
        if horizon is not None:
            for name, pod in list(pods.items()):
                if pod.ended is not None and (horizon - pod.ended).total_seconds() > ENDED_POD_KEEP_S:
                    del pods[name]
        self._changes += 1  # a reconcile that read this BigModel's pods is no longer settled
        self._bucket_versions[("model pods", namespace, bigmodel)] = self._changes

    def pods_of(self, namespace: str, bigmodel: str) -> dict[str, PodRecord]:
        bucket = ("model pods", namespace, bigmodel)
        if (reads := _recording.get()) is not None:
            reads.buckets.setdefault(bucket, self._bucket_versions.get(bucket, 0))
        return dict(self.model_pods.get((namespace, bigmodel), {}))

    # --- writes (watch events, our own applies) ---

    def put(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        if body["kind"] in SLIM_KINDS:
            # Children: we compare their spec-hash annotation and read their status, never their spec, except a
            # Job's `suspend` (a Job Kueue has not admitted yet is Queued, not Pending).
            kept = {k: v for k, v in body.items() if k != "spec"}
            suspend = (body.get("spec") or {}).get("suspend")
            if body["kind"] == "Job" and suspend is not None:
                kept["spec"] = {"suspend": suspend}
            body = kept
        key = (body["kind"], meta.get("namespace", ""), meta["name"])
        self._unindex(key, self._objects.get(key))
        self._objects[key] = body
        self._kinds.setdefault(key[0], {})[key[1:]] = None
        self._index(key, body)

    def holds(self, body: dict[str, Any]) -> bool:
        """Whether the cache already holds this version of the object (the watch's echo of a write whose answer
        `put` stored): putting it again would change nothing a reconcile reads."""
        meta = body["metadata"]
        cached = self._objects.get((body["kind"], meta.get("namespace", ""), meta["name"]))
        version = meta.get("resourceVersion")
        return cached is not None and version is not None and cached["metadata"].get("resourceVersion") == version

    def drop(self, kind: str, namespace: str, name: str) -> None:
        if kind == "BigModel":
            self.model_pods.pop((namespace, name), None)
        key = (kind, namespace, name)
        self._unindex(key, self._objects.pop(key, None))
        self._kinds.get(kind, {}).pop((namespace, name), None)
        self.written_status.pop(key, None)
        self._settled.pop(key, None)

    def set_gpu_node(self, node: str, product: str | None) -> bool:
        """Record (or, with None, forget) a GPU node; True when the set of products changed."""
        before = set(self.gpu_nodes.values())
        if product is None:
            self.gpu_nodes.pop(node, None)
        else:
            self.gpu_nodes[node] = product
        changed = set(self.gpu_nodes.values()) != before
        self._gpu_version += changed
        return changed

    @staticmethod
    def _buckets_of(key: Key, body: dict[str, Any]) -> list[Bucket]:
        kind, namespace, _ = key
        out: list[Bucket] = []
        labels = body["metadata"].get("labels") or {}
        for label, owner_kind in OWNER_LABELS.items():
            if owner := labels.get(label):
                out.append((f"{kind} of {owner_kind}", namespace, owner))
        if kind == "FineTuneJob":
            target = ((body.get("spec") or {}).get("deployTo") or {}).get("bigModel")
            if target:
                out.append(("deploying", namespace, str(target)))
        return out

    def _index(self, key: Key, body: dict[str, Any]) -> None:
        for bucket in self._buckets_of(key, body):
            self._buckets.setdefault(bucket, set()).add(key)
            self._changes += 1
            self._bucket_versions[bucket] = self._changes

    def _unindex(self, key: Key, body: dict[str, Any] | None) -> None:
        """Take `key` out of its buckets. A bucket that empties is dropped with its version (an empty
        bucket reads as version 0 again), so the indexes hold nothing for objects that are gone."""
        if body is None:
            return
        for bucket in self._buckets_of(key, body):
            members = self._buckets.get(bucket)
            if members is None:
                continue
            members.discard(key)
            if members:
                self._changes += 1
                self._bucket_versions[bucket] = self._changes
            else:
                del self._buckets[bucket]
                self._bucket_versions.pop(bucket, None)

    # --- reads (recorded while a reconcile runs) ---

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = (kind, namespace, name)
        body = self._objects.get(key)
        if (reads := _recording.get()) is not None:
            reads.objects.setdefault(key, _version(body))
        return body

    def _bucket(self, bucket: Bucket) -> list[dict[str, Any]]:
        if (reads := _recording.get()) is not None:
            reads.buckets.setdefault(bucket, self._bucket_versions.get(bucket, 0))
        return [self._objects[key] for key in sorted(self._buckets.get(bucket, ()))]

    def children(self, kind: str, owner_kind: str, namespace: str, owner: str) -> list[dict[str, Any]]:
        """Objects of `kind` that name `owner` in their owner label, by name."""
        return self._bucket((f"{kind} of {owner_kind}", namespace, owner))

    def deploying_to(self, namespace: str, bigmodel: str) -> list[dict[str, Any]]:
        """FineTuneJobs whose spec.deployTo.bigModel is `bigmodel`, by name."""
        return self._bucket(("deploying", namespace, bigmodel))

    def gpu_products(self) -> set[str]:
        if (reads := _recording.get()) is not None and reads.gpu is None:
            reads.gpu = self._gpu_version
        return set(self.gpu_nodes.values())

    def names(self, kind: str) -> list[tuple[str, str]]:
        """(namespace, name) of every object of one kind (the resync; never a reconcile path)."""
        return list(self._kinds.get(kind, {}))

    def count(self, kind: str) -> int:
        return len(self._kinds.get(kind, {}))

    def entries(self) -> int:
        """Everything kept per object (cache, index buckets, settled reads, written statuses, model pods): 0 once
        every object it saw is gone (the GPU products of nodes aside)."""
        tables = (self._objects, self._buckets, self._bucket_versions, self._settled, self.written_status)
        return sum(len(table) for table in tables) + len(self.model_pods)

    def kinds(self) -> list[str]:
        return sorted(kind for kind, names in self._kinds.items() if names)

    # --- settled outcomes ---

    @contextlib.contextmanager
    def recording(self, key: Key) -> Iterator[Reads]:
        """Record the reads of the reconcile of `key` (its own body first)."""
        reads = Reads()
        reads.objects[key] = _version(self._objects.get(key))
        token = _recording.set(reads)
        try:
            yield reads
        finally:
            _recording.reset(token)

    def settle(self, key: Key, reads: Reads) -> None:
        """The reconcile of `key` finished: remember its reads if it used nothing outside the cache."""
        if reads.outside:
            self._settled.pop(key, None)
        else:
            self._settled[key] = reads

    def unsettle(self, key: Key) -> None:
        self._settled.pop(key, None)

    def settled(self, key: Key) -> bool:
        """Whether the last reconcile of `key` made no API call and nothing it read has moved since."""
        reads = self._settled.get(key)
        if reads is None:
            return False
        if reads.until is not None and time.time() >= reads.until:
            return False
        if reads.gpu is not None and reads.gpu != self._gpu_version:
            return False
        objects = self._objects
        for read_key, version in reads.objects.items():
            if _version(objects.get(read_key)) != version:
                return False
        versions = self._bucket_versions
        return all(versions.get(bucket, 0) == version for bucket, version in reads.buckets.items())
