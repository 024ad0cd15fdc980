"""What the operator has seen of the cluster, fed by kopf watch events; no API calls here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bigmodel_operator.status.startup_phases import PodRecord

Key = tuple[str, str, str]  # (kind, namespace, name)
ENDED_POD_KEEP_S = 3600.0
SLIM_KINDS = frozenset(
    {"RayService", "Ingress", "NetworkPolicy", "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Job", "Pod"}
)


@dataclass
class ClusterState:
    """Latest bodies of our resources and children, GPU products on nodes, and what we last wrote."""

    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    gpu_nodes: dict[str, str] = field(default_factory=dict)  # node name -> nvidia.com/gpu.product
    written_status: dict[Key, dict[str, Any]] = field(default_factory=dict)
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

    def pods_of(self, namespace: str, bigmodel: str) -> dict[str, PodRecord]:
        return dict(self.model_pods.get((namespace, bigmodel), {}))

    def put(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        if body["kind"] in SLIM_KINDS:
            # Children: we compare their spec-hash annotation and read their status, never their spec.
            body = {k: v for k, v in body.items() if k != "spec"}
        self.objects[(body["kind"], meta.get("namespace", ""), meta["name"])] = body

    def drop(self, kind: str, namespace: str, name: str) -> None:
        self.objects.pop((kind, namespace, name), None)
        self.written_status.pop((kind, namespace, name), None)
        if kind == "BigModel":
            self.model_pods.pop((namespace, name), None)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    def gpu_products(self) -> set[str]:
        return set(self.gpu_nodes.values())
