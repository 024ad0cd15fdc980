"""Delete and re-apply with the same name, many times in a row (issue 21), on the real apiserver with the
controller-manager's garbage collector running: every time the new object ends with the status a first apply
gets, and every child belongs to it. Before, the new BigModel stopped at ChildNotControlled against the old
ServiceAccount for good, and the generated API-keys Secret could be lost to the 409 race.

The worst time to Ready (or Succeeded) of each run is printed and written to .cluster/logs/recreate.json.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from kuberay_standin import kuberay_serving_status
from manifests import cluster_finetunejob

from .conftest import GROUP, REPO, VERSION, condition, load_example, or_none

pytestmark = pytest.mark.usefixtures("operator_process")
CYCLES = int(os.environ.get("BIGMODEL_RECREATE_CYCLES", "20"))
RESULTS = REPO / ".cluster" / "logs" / "recreate.json"


def _uid(obj: Any) -> str | None:
    return None if obj is None else str(obj["metadata"]["uid"])


def _controller(obj: Any) -> str | None:
    """The uid of an object's controller (from the kubernetes client's model or a dict)."""
    if obj is None:
        return None
    meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata
    refs = meta.get("ownerReferences") if isinstance(meta, dict) else meta.owner_references
    for raw in refs or []:
        ref = raw if isinstance(raw, dict) else raw.to_dict()
        if ref.get("controller"):
            return str(ref["uid"])
    return None


def _summary(status: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """What must be the same after every re-apply: our fields, conditions without their times."""
    out: dict[str, Any] = {k: status.get(k) for k in fields}
    out["conditions"] = sorted(
        (c["type"], c["status"], c["reason"], c["message"]) for c in status.get("conditions") or []
    )
    return out


def _delete_and_create(custom: Any, namespace: str, plural: str, body: dict[str, Any]) -> tuple[float, str]:
    """`kubectl delete` (background propagation, as kubectl does) then `kubectl apply` of the same manifest."""
    from kubernetes.client.rest import ApiException

    name = body["metadata"]["name"]
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name, propagation_policy="Background")
    deadline = time.monotonic() + 30
    while True:
        try:
            start = time.monotonic()
            created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
            return start, str(created["metadata"]["uid"])
        except ApiException as error:  # the old one is still there for a moment
            if error.status != 409 or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _apply_then_recreate(
    custom: Any,
    namespace: str,
    plural: str,
    body: dict[str, Any],
    converged: Callable[[str], dict[str, Any] | None],
    fields: tuple[str, ...],
    wait_until: Callable[..., Any],
    *,
    first_s: float,
) -> None:
    """Apply `body`, wait until it converged, then CYCLES times delete, re-apply and wait again: every time
    the status summary is the first apply's. Records the times to converged under the object's kind."""
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
    first = wait_until(lambda: converged(_uid(created) or ""), timeout=first_s, interval=0.1, what="the first apply")
    reference = _summary(first["status"], fields)
    seconds = []
    for cycle in range(CYCLES):
        start, uid = _delete_and_create(custom, namespace, plural, body)
        done = wait_until(lambda uid=uid: converged(uid), timeout=120, interval=0.1, what=f"cycle {cycle}")
        seconds.append(time.monotonic() - start)
        assert _summary(done["status"], fields) == reference, f"cycle {cycle}"
    _record(body["kind"], seconds)


def _record(kind: str, seconds: list[float]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[kind] = {"cycles": len(seconds), "worst_s": max(seconds), "median_s": sorted(seconds)[len(seconds) // 2]}
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"\n{kind}: {len(seconds)} delete + re-apply cycles, time to converged: {results[kind]}")


def _owned_by(uid: str, children: list[tuple[Callable[..., Any], str]], namespace: str) -> bool:
    """Whether every (read, name) child exists and `uid` is its controller."""
    return all(_controller(or_none(read, name, namespace)) == uid for read, name in children)


def _apis(api_client: Any) -> tuple[Any, Any, Any, Any]:
    """The core, RBAC, networking and batch clients."""
    from kubernetes import client

    return (
        client.CoreV1Api(api_client),
        client.RbacAuthorizationV1Api(api_client),
        client.NetworkingV1Api(api_client),
        client.BatchV1Api(api_client),
    )


BIGMODEL_FIELDS = ("observedGeneration", "replicas", "readyReplicas", "url", "selector", "rayService", "plan")


def test_bigmodel_delete_and_reapply_converges_every_time(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    core, rbac, net, _ = _apis(api_client)
    body = load_example("bigmodel-tiny-cpu.yaml")
    name = body["metadata"]["name"]
    children = [
        (net.read_namespaced_network_policy, f"{name}-ray"),
        (core.read_namespaced_secret, f"{name}-api-keys"),
        (core.read_namespaced_service_account, f"{name}-serving"),
        (rbac.read_namespaced_role, f"{name}-serving"),
        (rbac.read_namespaced_role_binding, f"{name}-serving"),
    ]

    def converged(uid: str) -> dict[str, Any] | None:
        """The BigModel once Ready with every child its own; plays KubeRay (Serve RUNNING) on its RayService."""
        rayservice = or_none(custom.get_namespaced_custom_object, "ray.io", "v1", namespace, "rayservices", name)
        if _controller(rayservice) != uid:
            return None
        if not (rayservice.get("status") or {}).get("numServeEndpoints"):
            status = {"status": kuberay_serving_status(name, 1)}
            custom.patch_namespaced_custom_object_status("ray.io", "v1", namespace, "rayservices", name, status)
        bm = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", name)
        if _uid(bm) != uid or condition(bm, "Ready").get("status") != "True":
            return None
        return bm if _owned_by(uid, children, namespace) else None

    _apply_then_recreate(custom, namespace, "bigmodels", body, converged, BIGMODEL_FIELDS, wait_until, first_s=60)


FINETUNEJOB_FIELDS = ("observedGeneration", "jobName", "baseModelUri", "plan", "phase", "adapterUri")


def test_finetunejob_delete_and_reapply_converges_every_time(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    core, rbac, _, batch = _apis(api_client)
    body = cluster_finetunejob("tune")
    children = [
        (batch.read_namespaced_job, "tune-train"),
        (core.read_namespaced_config_map, "tune-trainer-config"),
        (core.read_namespaced_service_account, "tune-trainer"),
        (rbac.read_namespaced_role, "tune-trainer"),
        (rbac.read_namespaced_role_binding, "tune-trainer"),
    ]

    def converged(uid: str) -> dict[str, Any] | None:
        ftj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "tune")
        if _uid(ftj) != uid or (ftj.get("status") or {}).get("phase") != "Succeeded":
            return None
        return ftj if _owned_by(uid, children, namespace) else None

    _apply_then_recreate(custom, namespace, "finetunejobs", body, converged, FINETUNEJOB_FIELDS, wait_until, first_s=90)
