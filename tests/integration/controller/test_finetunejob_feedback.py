"""Feedback on the real control plane: BigModel spec.feedback -> the sink in the RayService; FineTuneJob
spec.dataset.fromFeedback -> the BigModel's sink in the trainer config, admission rules with field paths."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from manifests import cluster_finetunejob

from .conftest import GROUP, VERSION, condition, load_example, or_none

pytestmark = pytest.mark.usefixtures("operator_process")
SINK = {"enabled": True, "sink": {"pvc": {"claimName": "feedback", "path": "chats"}}, "retention": {"seconds": 7200}}


def _bigmodel(name: str, feedback: dict[str, Any] | None) -> dict[str, Any]:
    body = load_example("bigmodel-tiny-cpu.yaml")
    body["metadata"] = {"name": name}
    if feedback is not None:
        body["spec"]["feedback"] = feedback
    return body


def _from_feedback(name: str, big_model: str) -> dict[str, Any]:
    body = cluster_finetunejob(name)
    body["spec"]["dataset"] = {"fromFeedback": {"bigModel": big_model, "minRating": 4, "since": "2026-11-01T00:00:00Z"}}
    return body


def _create(custom: Any, namespace: str, plural: str, body: dict[str, Any]) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def _ftj(custom: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", name))


def test_from_feedback_waits_for_its_bigmodel_then_reads_its_sink(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    from kubernetes import client

    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    _create(custom, namespace, "finetunejobs", _from_feedback("again", "support"))
    pending = wait_until(
        lambda: (
            (f := _ftj(custom, namespace, "again"))
            and condition(f, "Complete").get("reason") == "FeedbackSourceNotFound"
            and f
        ),
        timeout=30,
    )
    assert "spec.dataset.fromFeedback.bigModel" in condition(pending, "Complete")["message"]
    assert or_none(batch.read_namespaced_job, "again-train", namespace) is None

    _create(custom, namespace, "bigmodels", _bigmodel("support", SINK))
    job = wait_until(lambda: or_none(batch.read_namespaced_job, "again-train", namespace), timeout=60)
    rendered = json.loads(core.read_namespaced_config_map("again-trainer-config", namespace).data["config.json"])
    dataset = rendered["dataset"]
    assert (dataset["uri"], dataset["format"]) == ("pvc://feedback/chats", "chat")
    created = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "again")
    # The snapshot ends when the job was created: a retried pod reads the same rows (issue 19).
    until = created["metadata"]["creationTimestamp"]
    assert dataset["feedback"] == {"min_rating": 4, "since": "2026-11-01T00:00:00Z", "until": until}
    volumes = {v.name: v for v in job.spec.template.spec.volumes}
    assert volumes["pvc-feedback"].persistent_volume_claim.claim_name == "feedback"
    assert volumes["pvc-feedback"].persistent_volume_claim.read_only is True
    mounts = {m.name: m.mount_path for m in job.spec.template.spec.containers[0].volume_mounts}
    assert dataset["local_path"] == f"{mounts['pvc-feedback']}/chats"

    rayservice = wait_until(
        lambda: or_none(custom.get_namespaced_custom_object, "ray.io", "v1", namespace, "rayservices", "support"),
        timeout=30,
    )
    cluster = rayservice["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        claims = [v.get("persistentVolumeClaim", {}).get("claimName") for v in group["template"]["spec"]["volumes"]]
        assert "feedback" in claims
    application = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]
    ingress = next(d for d in application["deployments"] if d["name"] == "BigModelIngress")
    assert ingress["user_config"]["feedback"] == {
        "enabled": True,
        "sink_path": "/var/lib/bigmodel/feedback/chats",
        "sink_root": "/var/lib/bigmodel/feedback",
        "ttl_s": 7200,
    }


def test_a_bigmodel_without_feedback_is_named_as_the_reason(
    custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    _create(custom, namespace, "bigmodels", _bigmodel("quiet", None))
    _create(custom, namespace, "finetunejobs", _from_feedback("nothing", "quiet"))
    pending = wait_until(
        lambda: (
            (f := _ftj(custom, namespace, "nothing"))
            and condition(f, "Complete").get("reason") == "FeedbackNotEnabled"
            and f
        ),
        timeout=30,
    )
    assert pending["status"]["phase"] == "Pending"
    assert "spec.feedback.enabled" in condition(pending, "Complete")["message"]


@pytest.mark.parametrize(
    ("plural", "body", "message", "field"),
    [
        (
            "finetunejobs",
            {"uri": "file:///data/chats.jsonl", "format": "chat", "fromFeedback": {"bigModel": "x"}},
            "set exactly one of dataset.uri or dataset.fromFeedback",
            "spec.dataset.uri",
        ),
        (
            "finetunejobs",
            {"fromFeedback": {"bigModel": "x"}, "format": "completion"},
            "dataset.format must be chat",
            "spec.dataset.format",
        ),
        ("bigmodels", {"enabled": True}, "feedback.enabled needs feedback.sink", "spec.feedback.sink"),
    ],
)
def test_admission_names_the_field(
    custom: Any, namespace: str, plural: str, body: Any, message: str, field: str
) -> None:
    from kubernetes.client.rest import ApiException

    if plural == "finetunejobs":
        manifest = cluster_finetunejob("refused")
        manifest["spec"]["dataset"] = body
    else:
        manifest = _bigmodel("refused", body)
    with pytest.raises(ApiException) as error:
        _create(custom, namespace, plural, manifest)
    assert error.value.status == 422, error.value.body
    assert message in error.value.body and field in error.value.body
