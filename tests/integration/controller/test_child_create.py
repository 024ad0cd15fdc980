"""The one-round-trip create of a child (Kube.apply(if_absent=True), reconcile/children.py) on the real apiserver.

A reconcile creates a child the watch cache does not hold with a POST under our field manager: the apiserver
creates the object, or refuses with 409 when one of that name exists and leaves it untouched (a user's object must
never be written). The apiserver records a POST's fields as an Update, which an apply cannot remove; the first
update of such a child (ensure_child) turns that entry into our Apply's, so an apply that drops a field removes it.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest

from bigmodel_operator import naming
from bigmodel_operator.kube import ApiError, Kube, load_credentials
from bigmodel_operator.reconcile.children import ensure_child, ownership_upgrade
from bigmodel_operator.reconcile.state import ClusterState

# Another manager's entry in a stale cached copy only: our entry's index there is not the live one (`test` fails).
_OTHER = {
    "manager": "someone-else",
    "operation": "Update",
    "apiVersion": "v1",
    "fieldsType": "FieldsV1",
    "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:note": {}}}},
}


def _config_map(namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "child", "namespace": namespace, "labels": {"app": "x"}},
        "data": data,
    }


def _managers(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["manager"], m["operation"]) for m in body["metadata"]["managedFields"]]


def _own(core: Any, namespace: str, child: dict[str, Any]) -> dict[str, Any]:
    """A ConfigMap that controls `child` (a real object: garbage collection leaves the child alone)."""
    from kubernetes import client

    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid, "controller": True}
    core.patch_namespaced_config_map(child["metadata"]["name"], namespace, {"metadata": {"ownerReferences": [ref]}})
    return {"kind": "ConfigMap", "metadata": {"name": "owner", "namespace": namespace, "uid": owner.metadata.uid}}


def test_create_if_absent_creates_once_and_never_touches_an_existing_object(
    kubeconfig: Path, api_client: Any, namespace: str
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api_client)

    async def main() -> None:
        kube = Kube(load_credentials(str(kubeconfig)))
        try:
            created = await kube.apply(_config_map(namespace, {"a": "1", "b": "2"}), if_absent=True)
            assert created["data"] == {"a": "1", "b": "2"}
            assert _managers(created) == [("bigmodel-operator", "Update")]
            with pytest.raises(ApiError) as refused:
                await kube.apply(_config_map(namespace, {"a": "changed"}), if_absent=True)
            assert refused.value.status == 409
            assert core.read_namespaced_config_map("child", namespace).data == {"a": "1", "b": "2"}
            # A plain apply without `b` would leave it (the POST's Update owns it); ensure_child's first update
            # turns that entry into our Apply's first, so `b` goes, even from a stale cached copy.
            owner = _own(core, namespace, created)
            stale = copy.deepcopy(await kube.get("ConfigMap", namespace, "child"))
            stale["metadata"]["managedFields"].insert(0, _OTHER)  # an entry the apiserver has since dropped
            state = ClusterState()
            state.put(stale)
            desired = _config_map(namespace, {"a": "1"})
            desired["metadata"]["ownerReferences"] = stale["metadata"]["ownerReferences"]
            desired["metadata"]["annotations"] = {naming.ANNOTATION_SPEC_HASH: "two"}
            tried: list[int] = []
            json_patch = kube.json_patch

            async def noted(*args: Any) -> dict[str, Any]:
                try:
                    answer = await json_patch(*args)
                except ApiError as error:
                    tried.append(error.status)
                    raise
                tried.append(200)
                return answer

            kube.json_patch = noted  # type: ignore[method-assign]
            result = await ensure_child(kube, state, desired, owner)
            assert result.action == "updated"
            assert tried == [422, 200]  # the stale copy's patch refused whole, then read again and turned
            live = core.read_namespaced_config_map("child", namespace)
            assert live.data == {"a": "1"}
            assert ("bigmodel-operator", "Apply") in [(m.manager, m.operation) for m in live.metadata.managed_fields]
            assert ("bigmodel-operator", "Update") not in [
                (m.manager, m.operation) for m in live.metadata.managed_fields
            ]
            # Applied once: nothing left to turn.
            assert ownership_upgrade(await kube.get("ConfigMap", namespace, "child") or {}) is None
            # A user's object of the name (another manager, no label of ours): 409, untouched.
            user = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="theirs"), data={"mine": "yes"})
            core.create_namespaced_config_map(namespace, user)
            theirs = {**_config_map(namespace, {"a": "1"}), "metadata": {"name": "theirs", "namespace": namespace}}
            with pytest.raises(ApiError) as conflict:
                await kube.apply(theirs, if_absent=True)
            assert conflict.value.status == 409
            kept = core.read_namespaced_config_map("theirs", namespace)
            assert kept.data == {"mine": "yes"} and not kept.metadata.labels
        finally:
            await kube.close()

    asyncio.run(main())
