"""The ingress's automatic canary decisions reach the BigModel on the real control plane.

The decision is written with the ingress's own reporter (bigmodel_serving.rollout_report) and the
credentials the Ray pods get: a token of the ServiceAccount the operator binds to its Role. The
operator then makes it durable: status.adapters, the rendered route, the FineTuneJob's Promoted
condition and Events. The same token may do nothing else."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bigmodel_serving.rollout_report import Connection, RolloutReporter

from .conftest import GROUP, VERSION, or_none
from .test_promotion import PASSED, _adapters, _app, _bigmodel, _finetune, _promoted, _routes, _user_config

pytestmark = pytest.mark.usefixtures("operator_process")
ACCOUNT = "tiny-cpu-serving"


def _token_kubeconfig(admin: Path, token: str, out: Path) -> Path:
    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": "ray-pods", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "ray-pods"
    out.write_text(yaml.safe_dump(config))
    return out


def _events(api_client: Any, namespace: str, kind: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    items = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    return {str(e.reason): e for e in items if e.involved_object.name == name and e.involved_object.kind == kind}


def _canary(custom: Any, namespace: str, candidate: str, wait_until: Callable[..., Any]) -> None:
    wait_until(
        lambda: (r := _routes(_app(custom, namespace))) and r[0]["candidate"] == candidate,
        timeout=150,
        what=f"canary route for {candidate}",
    )


def test_decisions_from_the_ingress_token_become_status_routes_conditions_and_events(
    api_client: Any, custom: Any, namespace: str, kubeconfig: Path, tmp_path: Path, wait_until: Callable[..., Any]
) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    _bigmodel(custom, namespace)
    _finetune(custom, namespace, "ftj-1", PASSED)
    wait_until(lambda: _adapters(custom, namespace) == {"ftj-1": "Stable"}, timeout=150, what="first version stable")
    _finetune(custom, namespace, "ftj-2", PASSED)
    _canary(custom, namespace, "support-bot.ftj-2", wait_until)
    wait_until(lambda: _adapters(custom, namespace) == {"ftj-1": "Stable", "ftj-2": "Candidate"}, timeout=30)

    # What the operator rendered for the ingress and the pods.
    app = _app(custom, namespace)
    assert app is not None
    assert _user_config(app, "BigModelIngress")["rollout_report"] == {"namespace": namespace, "bigmodel": "tiny-cpu"}
    cluster = app["_cluster"]
    assert cluster["headGroupSpec"]["template"]["spec"]["serviceAccountName"] == ACCOUNT
    assert all(g["template"]["spec"]["serviceAccountName"] == ACCOUNT for g in cluster["workerGroupSpecs"])

    core = client.CoreV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    wait_until(lambda: or_none(rbac.read_namespaced_role_binding, ACCOUNT, namespace), timeout=30, what="binding")
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
    issued = core.create_namespaced_service_account_token(ACCOUNT, namespace, request).status
    assert issued is not None and issued.token
    token = str(issued.token)
    pods_kubeconfig = _token_kubeconfig(kubeconfig, token, tmp_path / "ray-pods.kubeconfig")
    reporter = RolloutReporter(namespace, "tiny-cpu", Connection.from_kubeconfig(pods_kubeconfig))

    # An automatic rollback, exactly as the canary actor sends it.
    reason = "candidate error rate 45.0% > stable 0.0% + 5.0% after 20 requests"
    rollback = reporter.decision("support-bot", "support-bot.ftj-1", "support-bot.ftj-2", "rolled_back", reason)
    assert rollback is not None
    # The apiserver's authorizer sees a new RoleBinding a moment after it is stored.
    assert wait_until(lambda: reporter.report(rollback), timeout=15, interval=0.5, what="report accepted")

    wait_until(lambda: _adapters(custom, namespace) == {"ftj-1": "Stable", "ftj-2": "RolledBack"}, timeout=30)
    route = wait_until(
        lambda: (r := _routes(_app(custom, namespace))) and r[0]["candidate"] is None and r[0], timeout=30
    )
    assert (route["stable"], route["weight"], route["mode"]) == ("support-bot.ftj-1", 0.0, "auto")
    cond = wait_until(lambda: _promoted(custom, namespace, "ftj-2", "RolledBack"), timeout=30)
    assert cond["status"] == "False" and "error rate 45.0%" in cond["message"]
    ftj_events = wait_until(
        lambda: (e := _events(api_client, namespace, "FineTuneJob", "ftj-2")).get("RolledBack") and e
    )
    assert ftj_events["RolledBack"].type == "Warning"
    bm_events = wait_until(
        lambda: (
            (e := _events(api_client, namespace, "BigModel", "tiny-cpu")).keys()
            >= {"CanaryRolledBack", "AdapterRolledBack"}
            and e
        ),
        timeout=30,
    )
    assert "error rate 45.0%" in bm_events["CanaryRolledBack"].message
    assert bm_events["CanaryRolledBack"].involved_object.uid  # kubectl describe bigmodel shows it
    bm = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", "tiny-cpu")
    assert bm["status"]["rolloutDecisions"]["support-bot.ftj-2"]["decision"] == "rollback", "the operator keeps it"
    assert "rollouts" not in bm["spec"], "the operator never writes the spec"

    # A new candidate, then an automatic promote: it becomes stable, the old stable retires.
    _finetune(custom, namespace, "ftj-3", PASSED)
    _canary(custom, namespace, "support-bot.ftj-3", wait_until)
    wait_until(lambda: _adapters(custom, namespace).get("ftj-3") == "Candidate", timeout=30)
    promote = reporter.decision(
        "support-bot", "support-bot.ftj-1", "support-bot.ftj-3", "promoted", "200 candidate requests without regression"
    )
    assert promote is not None and reporter.report(promote)
    wait_until(
        lambda: _adapters(custom, namespace) == {"ftj-1": "Retired", "ftj-2": "RolledBack", "ftj-3": "Stable"},
        timeout=30,
    )
    route = wait_until(
        lambda: (r := _routes(_app(custom, namespace))) and r[0]["stable"] == "support-bot.ftj-3" and r[0]
    )
    assert (route["candidate"], route["weight"]) == (None, 0.0)
    assert wait_until(lambda: _promoted(custom, namespace, "ftj-3", "Stable"), timeout=30)["status"] == "True"
    assert wait_until(lambda: _promoted(custom, namespace, "ftj-1", "Superseded"), timeout=30)["status"] == "False"

    # Enough, and no more: another BigModel's status, the spec, reads, Secrets are all refused.
    assert RolloutReporter(namespace, "other", Connection.from_kubeconfig(pods_kubeconfig)).report(promote) is False
    pods_api = client.ApiClient(_configuration(pods_kubeconfig))
    refused = [
        lambda: client.CustomObjectsApi(pods_api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "bigmodels", "tiny-cpu", {"metadata": {"labels": {"x": "y"}}}
        ),
        lambda: client.CustomObjectsApi(pods_api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "bigmodels", "tiny-cpu"
        ),
        lambda: client.CustomObjectsApi(pods_api).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "finetunejobs", "ftj-3", {"status": {"phase": "Failed"}}
        ),
        lambda: client.CoreV1Api(pods_api).list_namespaced_secret(namespace),
        lambda: client.CoreV1Api(pods_api).list_namespaced_event(namespace),
    ]
    for call in refused:
        with pytest.raises(ApiException) as denied:
            call()
        assert denied.value.status == 403


def _configuration(path: Path) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=configuration)
    return configuration
