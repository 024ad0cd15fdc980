"""The trainer's per-job identity: it may patch its own FineTuneJob's status and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bigmodel_training.progress import KubeConnection, KubeSink

from .conftest import GROUP, VERSION, or_none
from .test_finetunejob import _ftj, _get

pytestmark = pytest.mark.usefixtures("operator_process")


def _token_kubeconfig(admin: Path, token: str, out: Path) -> Path:
    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": "trainer", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "trainer"
    out.write_text(yaml.safe_dump(config))
    return out


def test_trainer_token_patches_only_its_own_status(
    api_client: Any, custom: Any, namespace: str, kubeconfig: Path, tmp_path: Path, wait_until: Callable[..., Any]
) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    for name in ("mine", "other"):
        body = _ftj(name)
        body["spec"]["resources"]["gpu"]["product"] = "NVIDIA-H200"  # stays Pending: no such node
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    core = client.CoreV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    wait_until(lambda: _exists(core, namespace, "mine-trainer"), timeout=30, what="trainer ServiceAccount")
    wait_until(lambda: _binding_exists(rbac, namespace, "mine-trainer"), timeout=30, what="trainer RoleBinding")
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    token = core.create_namespaced_service_account_token("mine-trainer", namespace, request).status.token
    connection = KubeConnection.from_kubeconfig(_token_kubeconfig(kubeconfig, token, tmp_path / "trainer.kubeconfig"))

    progress = {"status": {"progress": {"step": 3, "totalSteps": 12, "percent": 25, "loss": 2.5}}}
    # The apiserver's authorizer sees a new RoleBinding a moment after it is stored.
    assert wait_until(lambda: KubeSink(namespace, "mine", connection).send(progress), timeout=10, interval=0.5)
    assert _get(custom, namespace, "mine")["status"]["progress"]["percent"] == 25
    assert KubeSink(namespace, "other", connection).send(progress) is False, "another job's status is off limits"

    trainer_api = client.ApiClient(_configuration(tmp_path / "trainer.kubeconfig"))
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(trainer_api).list_namespaced_secret(namespace)
    assert denied.value.status == 403
    with pytest.raises(ApiException) as denied_spec:
        client.CustomObjectsApi(trainer_api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "finetunejobs", "mine", {"metadata": {"labels": {"x": "y"}}}
        )
    assert denied_spec.value.status == 403


def _exists(core: Any, namespace: str, name: str) -> bool:
    return or_none(core.read_namespaced_service_account, name, namespace) is not None


def _binding_exists(rbac: Any, namespace: str, name: str) -> bool:
    return or_none(rbac.read_namespaced_role_binding, name, namespace) is not None


def _configuration(path: Path) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=configuration)
    return configuration
