"""A FineTuneJob writing to s3:// on the real control plane: admitted, rendered with the storage Secret as
the trainer's environment and no mount for the output, and its adapterUri is the s3:// location."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from manifests import cluster_finetunejob

from .conftest import GROUP, VERSION

pytestmark = pytest.mark.usefixtures("operator_process")


def _get(custom: Any, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", name)
    return obj


def test_s3_output_uses_the_storage_secret(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any], s3_server: Any
) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api_client)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="s3-creds"), string_data=s3_server.env()),
    )
    body = cluster_finetunejob("tune-s3")
    output = f"s3://bigmodel-outputs/{namespace}/tune-s3"
    body["spec"]["output"]["uri"] = output
    body["spec"]["credentials"] = {"storageSecretName": "s3-creds"}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)

    batch = client.BatchV1Api(api_client)

    def job() -> Any:
        try:
            return batch.read_namespaced_job("tune-s3-train", namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    container = wait_until(job, timeout=60).spec.template.spec.containers[0]
    assert [ref.secret_ref.name for ref in container.env_from] == ["s3-creds"]
    env = {e.name: e.value for e in container.env}
    cache = env["BIGMODEL_S3_CACHE"]
    assert any(cache.startswith(m.mount_path + "/") and not m.read_only for m in container.volume_mounts)
    rendered = json.loads(core.read_namespaced_config_map("tune-s3-trainer-config", namespace).data["config.json"])
    assert rendered["output"] == {"uri": output}  # no mount: the trainer stages it and uploads
    assert "AWS" not in json.dumps(rendered)  # the keys stay in the Secret
    done = wait_until(
        lambda: (f := _get(custom, namespace, "tune-s3")) and f.get("status", {}).get("phase") == "Succeeded" and f,
        timeout=120,
    )
    assert done["status"]["adapterUri"] == output


@pytest.mark.parametrize("uri", ["s3://Bad_Bucket/x", "s3://ok-bucket/../escape", "gs://bucket/x"])
def test_bad_object_store_outputs_are_refused_at_admission(custom: Any, namespace: str, uri: str) -> None:
    from kubernetes.client.rest import ApiException

    body = cluster_finetunejob("tune-bad")
    body["spec"]["output"]["uri"] = uri
    with pytest.raises(ApiException) as refused:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    assert refused.value.status == 422
    assert "output.uri" in refused.value.body
