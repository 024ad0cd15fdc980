"""The Ray pods' identity: a ServiceAccount whose Role lets the ingress report canary decisions, nothing more.

The ingress's canary actor (bigmodel_serving.rollout_report) merge-patches
`status.rolloutDecisions` of its own BigModel and records an Event on it. The Role allows exactly
`patch` on `bigmodels/status` with resourceNames set to this one BigModel, and `create` on events
(Kubernetes cannot narrow `create` by name). No `get`, `list` or `watch` of anything: the pods never
read the cluster. The operator holds both permissions itself, so RBAC lets it grant them.
"""

from __future__ import annotations

from typing import Any

from bigmodel_operator import naming
from bigmodel_operator.api import GROUP

COMPONENT = "model-server"


def serving_account_name(bigmodel: str) -> str:
    """ServiceAccount (and Role, RoleBinding) of a BigModel's Ray pods."""
    return f"{bigmodel}-serving"


def role_rules(bigmodel: str) -> list[dict[str, Any]]:
    return [
        {"apiGroups": [GROUP], "resources": ["bigmodels/status"], "resourceNames": [bigmodel], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]


def build_serving_identity(body: dict[str, Any]) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding for the BigModel's Ray pods (owned by the BigModel)."""
    meta = body["metadata"]
    owner, namespace = meta["name"], meta["namespace"]
    name = serving_account_name(owner)

    def metadata() -> dict[str, Any]:
        return {
            "name": name,
            "namespace": namespace,
            "labels": naming.labels(naming.LABEL_BIGMODEL, owner, COMPONENT),
            "ownerReferences": [naming.owner_reference(body)],
        }

    account: dict[str, Any] = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata()}
    role: dict[str, Any] = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": metadata()}
    role["rules"] = role_rules(owner)
    binding: dict[str, Any] = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }
    out = [account, role, binding]
    for obj in out:
        obj["metadata"]["annotations"] = {naming.ANNOTATION_SPEC_HASH: naming.spec_hash(obj)}
    return out


def rollout_report(body: dict[str, Any]) -> dict[str, str]:
    """The ingress user_config's `rollout_report`: which BigModel it reports to."""
    meta = body["metadata"]
    return {"namespace": meta["namespace"], "bigmodel": meta["name"]}
