"""The one-round-trip create of a child (Kube.apply(if_absent=True), reconcile/children.py) on the real apiserver.

A reconcile creates a child the watch cache does not hold with a server-side apply that carries a resourceVersion
precondition no stored object has: the apiserver creates the object (ignoring the precondition), or refuses with
409 when one of that name exists and leaves it untouched (a user's object must never be written). The created
object's fields are owned by our Apply, so a later apply that drops a field removes it (a POST would have made
them an Update's, which an apply cannot remove).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bigmodel_operator.kube import ApiError, Kube, load_credentials


def _config_map(namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "child", "namespace": namespace, "labels": {"app": "x"}},
        "data": data,
    }


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
            assert [(m["manager"], m["operation"]) for m in created["metadata"]["managedFields"]] == [
                ("bigmodel-operator", "Apply")
            ]
            with pytest.raises(ApiError) as refused:
                await kube.apply(_config_map(namespace, {"a": "changed"}), if_absent=True)
            assert refused.value.status == 409
            assert core.read_namespaced_config_map("child", namespace).data == {"a": "1", "b": "2"}
            # Ours, from an Apply: a later apply without `b` removes it.
            await kube.apply(_config_map(namespace, {"a": "1"}))
            assert core.read_namespaced_config_map("child", namespace).data == {"a": "1"}
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
