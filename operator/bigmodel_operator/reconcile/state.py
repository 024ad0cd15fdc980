"""What the operator has seen of the cluster, fed by kopf watch events; no API calls here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str, str]  # (kind, namespace, name)
SLIM_KINDS = frozenset(
    {"RayService", "Ingress", "NetworkPolicy", "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Job", "Pod"}
)


@dataclass
class ClusterState:
    """Latest bodies of our resources and children, GPU products on nodes, and what we last wrote."""

    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    gpu_nodes: dict[str, str] = field(default_factory=dict)  # node name -> nvidia.com/gpu.product
    written_status: dict[Key, dict[str, Any]] = field(default_factory=dict)

    def put(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        if body["kind"] in SLIM_KINDS:
            # Children: we compare their spec-hash annotation and read their status, never their spec.
            body = {k: v for k, v in body.items() if k != "spec"}
        self.objects[(body["kind"], meta.get("namespace", ""), meta["name"])] = body

    def drop(self, kind: str, namespace: str, name: str) -> None:
        self.objects.pop((kind, namespace, name), None)
        self.written_status.pop((kind, namespace, name), None)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    def gpu_products(self) -> set[str]:
        return set(self.gpu_nodes.values())
