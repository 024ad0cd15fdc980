"""Names and labels of everything the operator creates: one place, so they never drift apart."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from bigmodel_operator.api import API_VERSION

MANAGED_BY = "bigmodel-operator"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_BIGMODEL = "bigmodel.io/bigmodel"
LABEL_FINETUNEJOB = "bigmodel.io/finetunejob"
ANNOTATION_SPEC_HASH = "bigmodel.io/spec-hash"


def spec_hash(obj: dict[str, Any]) -> str:
    """A short stable hash of a desired object (sorted JSON), stored on the child as an annotation."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return digest[:16]


def labels(kind_label: str, owner_name: str, component: str) -> dict[str, str]:
    """The labels every child carries."""
    return {
        LABEL_NAME: component,
        LABEL_INSTANCE: owner_name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: "bigmodel",
        kind_label: owner_name,
    }


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """A controller ownerReference to a BigModel or FineTuneJob body (deletion goes through GC)."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", API_VERSION),
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def is_controlled_by(child: dict[str, Any], owner_uid: str) -> bool:
    """Whether `child` names the owner with this uid as its controller."""
    refs = child.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("controller") and ref.get("uid") == owner_uid for ref in refs)


def rayservice_name(bigmodel: str) -> str:
    return bigmodel


def ingress_name(bigmodel: str) -> str:
    return bigmodel


def network_policy_name(bigmodel: str) -> str:
    return f"{bigmodel}-ray"


def serve_service_name(bigmodel: str) -> str:
    """KubeRay names the Serve Service of a RayService `<name>-serve-svc`."""
    return f"{rayservice_name(bigmodel)}-serve-svc"


def job_name(finetunejob: str) -> str:
    return f"{finetunejob}-train"


def trainer_config_name(finetunejob: str) -> str:
    return f"{finetunejob}-trainer-config"


def trainer_account_name(finetunejob: str) -> str:
    return f"{finetunejob}-trainer"
