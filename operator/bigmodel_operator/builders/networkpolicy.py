"""The NetworkPolicy in front of a BigModel's Ray pods: only the Serve port is open to the cluster.

Ray's head listens on GCS 6379, the dashboard 8265 (job submission, logs, the Serve config with its
arguments) and the client server 10001; workers on many more. None of them authenticates on its own
in every Ray version, so anything that can reach a pod could submit Ray jobs that read the API-keys
file or the prompts. The policy admits:

- the Serve port (``serve_port``, 8000) from anywhere: clients, the Ingress controller, Prometheus
  probes through the Serve Service;
- every port from the same BigModel's Ray pods (GCS, object store, raylets, NCCL/Gloo between workers);
- the dashboard port (8265) from the KubeRay operator, which reads the Serve applications' status and
  submits the Serve config there: only pods labelled like KubeRay's operator (``kuberay_operator_labels``,
  default ``app.kubernetes.io/name: kuberay-operator``, the label of KubeRay's Helm chart) *in the
  operator's namespace* (``kuberay_operator_namespace``, default ``kuberay-system``, matched by the
  ``kubernetes.io/metadata.name`` label the apiserver puts on every namespace). A label alone would let
  any tenant who labels a pod that way reach every model's dashboard.

GCS (6379) and the client port stay open only to the same BigModel's Ray pods.

Egress is not restricted: the pods download models from the Hub or object stores. A NetworkPolicy
is enforced only by a CNI that implements it (Calico, Cilium, ...); elsewhere it is inert.
"""

from __future__ import annotations

from typing import Any

from bigmodel_operator import naming
from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.config import OperatorConfig

RAY_DASHBOARD_PORT = 8265
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def ray_pod_selector(name: str) -> dict[str, str]:
    """Labels every Ray pod of this BigModel carries (builders/rayservice.py puts them on both groups)."""
    return {naming.LABEL_BIGMODEL: name, naming.LABEL_COMPONENT: "model-server"}


def wants_network_policy(spec: BigModelSpec) -> bool:
    """On unless spec.expose.networkPolicy is false."""
    expose = spec.expose
    return not (expose is not None and expose.network_policy is False)


def build_network_policy(body: dict[str, Any], spec: BigModelSpec, config: OperatorConfig) -> dict[str, Any] | None:
    """The desired NetworkPolicy, or None when spec.expose.networkPolicy is false."""
    if not wants_network_policy(spec):
        return None
    name = body["metadata"]["name"]
    selector = {"matchLabels": ray_pod_selector(name)}
    desired: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": naming.network_policy_name(name),
            "namespace": body["metadata"]["namespace"],
            "labels": naming.labels(naming.LABEL_BIGMODEL, name, "network-policy"),
            "annotations": {},
            "ownerReferences": [naming.owner_reference(body)],
        },
        "spec": {
            "podSelector": selector,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"protocol": "TCP", "port": config.serve_port}]},
                {"from": [{"podSelector": selector}]},
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {NAMESPACE_NAME_LABEL: config.kuberay_operator_namespace}
                            },
                            "podSelector": {"matchLabels": dict(config.kuberay_operator_labels)},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": RAY_DASHBOARD_PORT}],
                },
            ],
        },
    }
    desired["metadata"]["annotations"][naming.ANNOTATION_SPEC_HASH] = naming.spec_hash(desired)
    return desired
