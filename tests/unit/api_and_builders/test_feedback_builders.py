"""Feedback in the API and the builders: BigModel spec.feedback -> ingress user_config + sink volume;
FineTuneJob spec.dataset.fromFeedback -> the trainer's dataset (golden YAML, contract parses)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from bigmodel_operator.api import BigModelSpec, FineTuneJobSpec
from bigmodel_operator.builders.feedback_sink import FEEDBACK_MOUNT, FEEDBACK_VOLUME, sink_uri
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.builders.trainer_job import build_config_map, build_job, render_trainer_config
from bigmodel_operator.builders.volumes import Mounts
from bigmodel_operator.config import OperatorConfig
from bigmodel_serving.args import parse_application
from bigmodel_training.config import TrainerConfig

from .conftest import assert_golden, load_example

CONFIG = OperatorConfig()
PVC_SINK = {"enabled": True, "sink": {"pvc": {"claimName": "feedback"}}, "retention": {"seconds": 3600}}


def _bigmodel(feedback: dict[str, Any] | None) -> tuple[dict[str, Any], BigModelSpec]:
    body = load_example("bigmodel-tiny-cpu.yaml")
    if feedback is not None:
        body["spec"]["feedback"] = feedback
    return body, BigModelSpec.model_validate(body["spec"])


def _rendered(feedback: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    body, spec = _bigmodel(feedback)
    rayservice = build_rayservice(body, spec, placement(spec, None), CONFIG)
    application = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]
    parse_application(application)  # the serving app's contract
    return rayservice, application


def _ingress_user_config(application: dict[str, Any]) -> dict[str, Any]:
    return dict(next(d for d in application["deployments"] if d["name"] == "BigModelIngress")["user_config"])


def _pods(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [group["template"]["spec"] for group in groups]


def test_a_pvc_sink_is_mounted_in_every_ray_pod_and_named_in_the_ingress_config() -> None:
    rayservice, application = _rendered(PVC_SINK)
    assert_golden("bigmodel-feedback.rayservice.yaml", rayservice)
    name = load_example("bigmodel-tiny-cpu.yaml")["metadata"]["name"]
    assert _ingress_user_config(application)["feedback"] == {
        "enabled": True,
        "sink_path": f"{FEEDBACK_MOUNT}/feedback/{name}",
        "sink_root": FEEDBACK_MOUNT,
        "ttl_s": 3600,
    }
    for pod in _pods(rayservice):
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[FEEDBACK_VOLUME] == {"name": FEEDBACK_VOLUME, "persistentVolumeClaim": {"claimName": "feedback"}}
        mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts[FEEDBACK_VOLUME] == {"name": FEEDBACK_VOLUME, "mountPath": FEEDBACK_MOUNT}


def test_feedback_off_or_disabled_renders_nothing() -> None:
    for feedback in (None, {**PVC_SINK, "enabled": False}, {"sink": {"pvc": {"claimName": "feedback"}}}):
        rayservice, application = _rendered(feedback)
        assert "feedback" not in _ingress_user_config(application)
        assert all(FEEDBACK_VOLUME not in str(pod) for pod in _pods(rayservice))
    plain, _ = _rendered(None)
    with_sink_off, _ = _rendered({**PVC_SINK, "enabled": False})
    assert plain["spec"] == with_sink_off["spec"]  # switching feedback off changes nothing deployed


def test_an_s3_sink_goes_to_the_ingress_without_a_volume() -> None:
    feedback = {"enabled": True, "sink": {"uri": "s3://bucket/feedback/tiny"}, "retention": {"maxEntries": 100}}
    rayservice, application = _rendered(feedback)
    assert _ingress_user_config(application)["feedback"] == {
        "enabled": True,
        "sink_uri": "s3://bucket/feedback/tiny",
        "max_entries": 100,
    }
    assert all(FEEDBACK_VOLUME not in str(pod) for pod in _pods(rayservice))


def test_sink_uri_for_a_finetunejob() -> None:
    _, spec = _bigmodel({"enabled": True, "sink": {"pvc": {"claimName": "fb", "path": "team/support"}}})
    assert sink_uri("tiny", spec) == "pvc://fb/team/support"
    _, default_path = _bigmodel(PVC_SINK)
    assert sink_uri("tiny", default_path) == "pvc://feedback/feedback/tiny"
    _, off = _bigmodel(None)
    assert sink_uri("tiny", off) is None


@pytest.mark.parametrize(
    ("feedback", "message"),
    [
        ({"enabled": True}, "feedback.enabled needs feedback.sink"),
        ({"sink": {}}, "exactly one of sink.pvc or sink.uri"),
        ({"sink": {"pvc": {"claimName": "a"}, "uri": "s3://bucket/x"}}, "exactly one of sink.pvc or sink.uri"),
        ({"sink": {"pvc": {"claimName": "a", "path": "x/../../etc"}}}, "'..'"),
        ({"sink": {"pvc": {"claimName": "a", "path": "/abs"}}}, "pattern"),
        ({"sink": {"uri": "file:///tmp/feedback"}}, "pattern"),
        ({"retention": {"seconds": 1}}, "greater than or equal"),
    ],
)
def test_bad_feedback_specs_are_refused(feedback: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _bigmodel(feedback)


# ---- FineTuneJob dataset.fromFeedback ----


def _finetunejob(dataset: dict[str, Any]) -> tuple[dict[str, Any], FineTuneJobSpec]:
    body = load_example("finetunejob-lora.yaml")
    body["spec"]["dataset"] = dataset
    return body, FineTuneJobSpec.model_validate(body["spec"])


FROM_FEEDBACK = {"fromFeedback": {"bigModel": "tiny", "minRating": 4, "since": "2026-11-01T00:00:00Z"}}


def test_from_feedback_renders_the_sink_read_only_with_the_filter() -> None:
    body, spec = _finetunejob(copy.deepcopy(FROM_FEEDBACK))
    mounts = Mounts(root=CONFIG.model_mount_root)
    rendered = render_trainer_config(body, spec, "hf://org/model", None, mounts, "pvc://feedback/feedback/tiny")
    assert rendered["dataset"] == {
        "uri": "pvc://feedback/feedback/tiny",
        "format": "chat",
        "feedback": {"min_rating": 4, "since": "2026-11-01T00:00:00Z"},
        "local_path": f"{CONFIG.model_mount_root}/pvc/feedback/feedback/tiny",
    }
    parsed = TrainerConfig.model_validate(rendered)  # the trainer's contract
    assert parsed.dataset.feedback is not None and parsed.dataset.feedback.min_rating == 4
    config_map = build_config_map(body, rendered)
    job = build_job(body, spec, 1, mounts, CONFIG, config_map)
    assert_golden("finetunejob-from-feedback.children.yaml", {"configMap": config_map, "job": job})
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["pvc-feedback"]["persistentVolumeClaim"] == {"claimName": "feedback", "readOnly": True}


def test_from_feedback_without_a_resolved_sink_is_an_error() -> None:
    body, spec = _finetunejob(copy.deepcopy(FROM_FEEDBACK))
    with pytest.raises(ValueError, match="resolved feedback sink"):
        render_trainer_config(body, spec, "hf://org/model", None, Mounts(root=CONFIG.model_mount_root))


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ({**FROM_FEEDBACK, "uri": "pvc://data/train.jsonl", "format": "chat"}, "exactly one of dataset.uri"),
        ({"format": "chat"}, "exactly one of dataset.uri"),
        ({"uri": "pvc://data/train.jsonl"}, "dataset.uri needs dataset.format"),
        ({**FROM_FEEDBACK, "format": "instruction"}, "format must be chat"),
        ({"fromFeedback": {"bigModel": "tiny", "minRating": 6}}, "less than or equal to 5"),
        ({"fromFeedback": {"bigModel": "Not_A_Name"}}, "pattern"),
    ],
)
def test_bad_dataset_sources_are_refused(dataset: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _finetunejob(dataset)


def test_the_crd_carries_the_rules_with_field_paths() -> None:
    from bigmodel_operator.crdgen import ALL_CRDS, render

    text = "".join(render(info) for info in ALL_CRDS)
    assert "has(self.uri) != has(self.fromFeedback)" in text
    assert "fieldPath: .uri" in text and "fieldPath: .sink" in text


def test_bigmodel_serve_writes_a_pvc_sink_to_a_local_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from bigmodel_operator.local import local_application

    manifest = load_example("bigmodel-tiny-cpu.yaml")
    manifest["spec"]["feedback"] = PVC_SINK
    app = local_application(copy.deepcopy(manifest), "/tmp/keys", tmp_path / "fb")
    assert _ingress_user_config(app)["feedback"]["sink_path"] == str(tmp_path / "fb")
    monkeypatch.setenv("BIGMODEL_FEEDBACK_DIR", str(tmp_path / "env"))
    assert _ingress_user_config(local_application(manifest, "/tmp/keys"))["feedback"]["sink_path"] == str(
        tmp_path / "env"
    )
    monkeypatch.delenv("BIGMODEL_FEEDBACK_DIR")
    monkeypatch.chdir(tmp_path)
    name = manifest["metadata"]["name"]
    default = _ingress_user_config(local_application(manifest, "/tmp/keys"))["feedback"]["sink_path"]
    assert default == str(tmp_path / "bigmodel-feedback" / name)
