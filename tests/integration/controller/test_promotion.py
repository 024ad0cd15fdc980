"""FineTuneJob deployTo on the real control plane: the Job really succeeds (KWOK finishes the training
pod, the Job controller marks it Complete), the test patches status.evaluation as the trainer does, and
the real operator renders (or refuses) the adapter version in the BigModel's RayService."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from manifests import cluster_finetunejob

from .conftest import GROUP, VERSION, condition, load_example, or_none

pytestmark = pytest.mark.usefixtures("operator_process")

PASSED = {
    "baseLoss": 2.31,
    "adaptedLoss": 1.12,
    "lossRatio": 0.4848,
    "heldOutExamples": 12,
    "passed": True,
    "reasons": ["held-out loss 1.1200 vs base 2.3100 on 12 example(s): ratio 0.485 <= maxLossRatio 1"],
}
FAILED = {
    "baseLoss": 2.31,
    "adaptedLoss": 3.05,
    "lossRatio": 1.3203,
    "heldOutExamples": 12,
    "passed": False,
    "reasons": [
        "held-out loss 3.0500 vs base 2.3100 on 12 example(s): ratio 1.320 > maxLossRatio 1: "
        "the adapter is worse than the base model"
    ],
}


def _bigmodel(custom: Any, namespace: str) -> None:
    body = load_example("bigmodel-tiny-cpu.yaml")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", body)


def _finetune(custom: Any, namespace: str, name: str, evaluation: dict[str, Any], hold: str = "") -> None:
    """A FineTuneJob deploying to tiny-cpu as a version of `support-bot`; the trainer's evaluation
    report is patched in at once (the trainer sends it before its pod exits)."""
    body = cluster_finetunejob(name, **({"bigmodel.io/kwok-complete-after": hold} if hold else {}))
    body["spec"]["output"]["uri"] = f"file:///output/{name}"
    body["spec"]["deployTo"] = {"bigModel": "tiny-cpu", "adapterName": "support-bot"}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    patch = {"status": {"evaluation": evaluation}}
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "finetunejobs", name, patch)


def _ftj(custom: Any, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", name)
    return obj


def _app(custom: Any, namespace: str) -> dict[str, Any] | None:
    rs = or_none(custom.get_namespaced_custom_object, "ray.io", "v1", namespace, "rayservices", "tiny-cpu")
    if rs is None:
        return None
    app: dict[str, Any] = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    app["_cluster"] = rs["spec"]["rayClusterConfig"]
    return app


def _user_config(app: dict[str, Any], deployment: str) -> dict[str, Any]:
    config: dict[str, Any] = next(d for d in app["deployments"] if d["name"] == deployment)["user_config"]
    return config


def _routes(app: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list(_user_config(app, "BigModelIngress").get("routes") or []) if app else []


def _promoted(custom: Any, namespace: str, name: str, reason: str) -> dict[str, Any] | None:
    cond = condition(_ftj(custom, namespace, name), "Promoted")
    return cond if cond.get("reason") == reason else None


def _events(api_client: Any, namespace: str, name: str) -> list[Any]:
    from kubernetes import client

    items = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    return [e for e in items if e.involved_object.name == name and e.involved_object.kind == "FineTuneJob"]


def _adapters(custom: Any, namespace: str) -> dict[str, str]:
    bm = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", "tiny-cpu")
    return {e["version"]: e["phase"] for e in (bm.get("status") or {}).get("adapters") or []}


def test_succeeded_job_with_a_passed_gate_is_served_as_a_new_adapter_version(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    _bigmodel(custom, namespace)
    _finetune(custom, namespace, "ftj-a", PASSED, hold="30s")

    # While it trains: the output is mounted and the LoRA slots are sized, no route yet.
    def training() -> dict[str, Any] | None:
        app = _app(custom, namespace)
        return app if app and app["args"].get("lora") and not _routes(app) else None

    before = wait_until(training, timeout=60, what="RayService sized for the FineTuneJob")

    served = wait_until(lambda: _routes(app := _app(custom, namespace)) and app, timeout=150, what="route")
    assert _routes(served) == [
        {
            "name": "support-bot",
            "stable": "support-bot.ftj-a",
            "candidate": None,
            "weight": 0.0,
            "mode": "auto",
            "split": "key",
        }
    ]
    engine = _user_config(served, "BigModelEngine")["adapters"]
    assert engine == [{"name": "support-bot.ftj-a", "uri": "file:///output/ftj-a", "local_path": "/output/ftj-a"}]
    assert _user_config(served, "BigModelIngress")["adapters"] == engine
    # Light edit only: the engines are not reloaded (args) and the pods not replaced (cluster config).
    assert served["args"] == before["args"]
    assert served["_cluster"] == before["_cluster"]

    promoted = wait_until(lambda: _promoted(custom, namespace, "ftj-a", "Stable"), timeout=30)
    assert promoted["status"] == "True" and "support-bot.ftj-a on BigModel tiny-cpu" in promoted["message"]
    assert _adapters(custom, namespace) == {"ftj-a": "Stable"}
    wait_until(lambda: [e for e in _events(api_client, namespace, "ftj-a") if e.reason == "Promoted"], timeout=30)

    # Issue 19: the promoted adapter outlives its FineTuneJob (a TTL, a GitOps prune).
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "ftj-a")

    def kept() -> Any:
        bm = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", "tiny-cpu")
        entries = (bm.get("status") or {}).get("adapters") or []
        return [e for e in entries if "its FineTuneJob is gone" in e.get("message", "")]

    [entry] = wait_until(kept, timeout=60, what="the version kept by the status")
    assert entry["phase"] == "Stable" and entry["uri"] == "file:///output/ftj-a"
    after = _app(custom, namespace)
    assert after is not None and _routes(after) == _routes(served)
    assert _user_config(after, "BigModelEngine")["adapters"] == engine


def test_failed_gate_renders_nothing_and_says_why_with_the_numbers(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    _bigmodel(custom, namespace)
    _finetune(custom, namespace, "ftj-bad", FAILED)
    refused = wait_until(lambda: _promoted(custom, namespace, "ftj-bad", "GateFailed"), timeout=150)
    assert refused["status"] == "False"
    assert "ratio 1.320 > maxLossRatio 1" in refused["message"]
    assert _ftj(custom, namespace, "ftj-bad")["status"]["phase"] == "Succeeded"  # training itself succeeded
    event = wait_until(
        lambda: [e for e in _events(api_client, namespace, "ftj-bad") if e.reason == "GateFailed"], timeout=30
    )[0]
    assert event.type == "Warning" and "ratio 1.320" in event.message
    wait_until(lambda: _adapters(custom, namespace) == {"ftj-bad": "Refused"}, timeout=30)
    app = _app(custom, namespace)
    assert app is not None and not _routes(app)
    assert _user_config(app, "BigModelEngine")["adapters"] == []


def test_rollback_override_takes_the_candidate_out_and_keeps_the_stable(
    custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    _bigmodel(custom, namespace)
    _finetune(custom, namespace, "ftj-1", PASSED)
    wait_until(lambda: _adapters(custom, namespace) == {"ftj-1": "Stable"}, timeout=150)
    _finetune(custom, namespace, "ftj-2", PASSED)
    canary = wait_until(
        lambda: (r := _routes(_app(custom, namespace))) and r[0]["candidate"] == "support-bot.ftj-2" and r[0],
        timeout=150,
    )
    assert (canary["stable"], canary["weight"], canary["mode"]) == ("support-bot.ftj-1", 0.2, "auto")
    # status.adapters is written right after the RayService.
    wait_until(lambda: _adapters(custom, namespace) == {"ftj-1": "Stable", "ftj-2": "Candidate"}, timeout=30)

    rollouts = {"spec": {"rollouts": [{"adapter": "support-bot", "action": "rollback"}]}}
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", "tiny-cpu", rollouts)
    rolled = wait_until(
        lambda: (r := _routes(_app(custom, namespace))) and r[0]["mode"] == "rollback" and r[0], timeout=30
    )
    assert (rolled["stable"], rolled["candidate"]) == ("support-bot.ftj-1", None)
    wait_until(lambda: _adapters(custom, namespace) == {"ftj-1": "Stable", "ftj-2": "RolledBack"}, timeout=30)
    bm = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", "tiny-cpu")
    assert bm["spec"]["rollouts"] == rollouts["spec"]["rollouts"], "the operator never writes the spec"
    assert wait_until(lambda: _promoted(custom, namespace, "ftj-2", "RolledBack"), timeout=30)["status"] == "False"


def test_a_bigmodel_that_cannot_deploy_promotes_nothing_until_it_can(
    custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    body = load_example("bigmodel-tiny-cpu.yaml")
    body["spec"]["engine"]["extraArgs"] = ["--swap-space", "4"]  # refused: nothing is deployed
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", body)
    _finetune(custom, namespace, "ftj-wait", PASSED)
    pending = wait_until(lambda: _promoted(custom, namespace, "ftj-wait", "PromotionPending"), timeout=150)
    assert pending["status"] == "False" and _adapters(custom, namespace) == {}
    assert _app(custom, namespace) is None

    fix = {"spec": {"engine": {"extraArgs": None}}}
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", "tiny-cpu", fix)
    wait_until(lambda: _promoted(custom, namespace, "ftj-wait", "Stable"), timeout=60)
    assert _routes(_app(custom, namespace))[0]["stable"] == "support-bot.ftj-wait"
