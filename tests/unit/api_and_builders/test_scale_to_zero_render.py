"""Scale to zero, the hold bound and the weight cache in what the operator renders, and the Ready reasons
ScaledToZero / Waking (honest 0/0 replicas)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from bigmodel_operator import conditions as c
from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.builders.serve_args import (
    DEFAULT_IDLE_SECONDS,
    DEFAULT_WAKE_TIMEOUT_SECONDS,
    ingress_config,
    scaling_args,
)
from bigmodel_operator.builders.volumes import quantity_bytes
from bigmodel_operator.conditions import Reason
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.reconcile.bigmodel_reconcile import spec_at_revision
from bigmodel_operator.status.bigmodel_status import BigModelObservation, compute_status
from bigmodel_serving.args import IngressConfig, parse_application

CONFIG = OperatorConfig()
BODY = {"metadata": {"name": "tiny", "namespace": "ns", "uid": "u1"}, "kind": "BigModel"}


def _spec(**extra: Any) -> BigModelSpec:
    return BigModelSpec.model_validate(
        {"model": {"uri": "s3://models/tiny"}, "resources": {"gpu": {"count": 0}}, **extra}
    )


def test_min_replicas_zero_renders_the_idle_period() -> None:
    spec = _spec(scaling={"minReplicas": 0, "maxReplicas": 2, "idleSeconds": 120})
    assert scaling_args(spec, CONFIG)["downscale_to_zero_delay_s"] == 120
    default = _spec(scaling={"minReplicas": 0, "maxReplicas": 1})
    assert scaling_args(default, CONFIG)["downscale_to_zero_delay_s"] == DEFAULT_IDLE_SECONDS
    assert "downscale_to_zero_delay_s" not in scaling_args(_spec(scaling={"minReplicas": 1}), CONFIG)
    assert scaling_args(_spec(scaling={"replicas": 0}), CONFIG)["downscale_to_zero_delay_s"] == DEFAULT_IDLE_SECONDS


def test_the_hold_bound_reaches_the_ingress() -> None:
    spec = _spec(scaling={"minReplicas": 0, "wakeTimeoutSeconds": 90})
    assert ingress_config("tiny", spec, [])["wake_timeout_s"] == 90
    default = ingress_config("tiny", _spec(scaling={"minReplicas": 0}), [])
    assert IngressConfig.model_validate(default).wake_timeout_s == DEFAULT_WAKE_TIMEOUT_SECONDS
    assert "wake_timeout_s" not in ingress_config("tiny", _spec(), [])


def test_scale_to_zero_rendering_parses_as_the_apps_contract() -> None:
    spec = _spec(
        scaling={"minReplicas": 0, "maxReplicas": 1, "idleSeconds": 60, "wakeTimeoutSeconds": 600},
        weightCache={"claimName": "weights", "maxSize": "50Gi"},
    )
    rayservice = build_rayservice(BODY, spec, placement(spec, None), CONFIG)
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    app = parse_application(serve["applications"][0])
    engine = next(d for d in app.deployments if d.name == "BigModelEngine")
    assert engine.autoscaling_config is not None and engine.autoscaling_config.min_replicas == 0
    assert engine.autoscaling_config.downscale_to_zero_delay_s == 60
    assert app.ingress_config().wake_timeout_s == 600
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == CONFIG.worker_idle_timeout_seconds
    worker = cluster["workerGroupSpecs"][0]
    assert worker["minReplicas"] == 0
    pod = worker["template"]["spec"]
    assert {"name": "weight-cache", "persistentVolumeClaim": {"claimName": "weights"}} in pod["volumes"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["BIGMODEL_S3_CACHE"] == "/mnt/bigmodel/weight-cache/s3"
    assert env["HF_HUB_CACHE"] == "/mnt/bigmodel/weight-cache/hf"
    # vLLM's cache (torch.compile's artifacts): the next wake reuses them
    assert env["VLLM_CACHE_ROOT"] == "/mnt/bigmodel/weight-cache/vllm"
    assert env["BIGMODEL_WEIGHT_CACHE_MAX_BYTES"] == str(50 * 2**30)
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert all(v["name"] != "weight-cache" for v in head["volumes"])  # the head loads no weights


def test_bounds_of_the_new_fields() -> None:
    with pytest.raises(ValidationError):
        _spec(scaling={"minReplicas": 0, "idleSeconds": 1})
    with pytest.raises(ValidationError):
        _spec(scaling={"minReplicas": 0, "wakeTimeoutSeconds": 7200})
    with pytest.raises(ValidationError):
        _spec(weightCache={"claimName": "Not_A_Name"})


@pytest.mark.parametrize(("text", "expected"), [("16Gi", 16 * 2**30), ("500M", 500 * 10**6), ("1024", 1024)])
def test_quantity_bytes(text: str, expected: int) -> None:
    assert quantity_bytes(text) == expected


def test_hf_revision_is_pinned_to_the_resolved_commit() -> None:
    spec = BigModelSpec.model_validate({"model": {"uri": "hf://org/m", "revision": "main"}})
    pinned = spec_at_revision(spec, "a" * 40)
    assert pinned.model.revision == "a" * 40 and spec.model.revision == "main"
    assert spec_at_revision(spec, None) is spec


def _ready_rayservice() -> dict[str, Any]:
    return {
        "status": {
            "numServeEndpoints": 1,  # the head's proxy: it stays at zero
            "conditions": [{"type": "Ready", "status": "True", "reason": "x", "message": ""}],
            "activeServiceStatus": {
                "applicationStatuses": {"tiny": {"status": "RUNNING"}},
                "rayClusterStatus": {"readyWorkerReplicas": 1, "desiredWorkerReplicas": 1},
            },
        }
    }


def _obs(**kw: Any) -> BigModelObservation:
    base: dict[str, Any] = {
        "generation": 1,
        "desired_replicas": 1,
        "plan": None,
        "plan_reason": Reason.PLANNED,
        "plan_message": "ok",
        "url": "http://tiny/v1",
        "rayservice": _ready_rayservice(),
        "scale_to_zero": True,
        "wake_timeout_s": 300,
    }
    base.update(kw)
    return BigModelObservation(**base)


def test_scaled_to_zero_is_ready_with_zero_replicas() -> None:
    status = compute_status(_obs(engine_ready=0, engine_starting=0), None)
    ready = c.get_condition(status["conditions"], c.READY) or {}
    assert (ready["status"], ready["reason"]) == ("True", Reason.SCALED_TO_ZERO)
    assert "held up to 300 s" in ready["message"]
    assert (status["replicas"], status["readyReplicas"]) == (0, 0)  # the idle worker pod is not a replica


def test_waking_is_ready_and_names_the_phase() -> None:
    status = compute_status(_obs(engine_ready=0, engine_starting=1, startup_phase="Loading"), None)
    ready = c.get_condition(status["conditions"], c.READY) or {}
    assert (ready["status"], ready["reason"]) == ("True", Reason.WAKING)
    assert "phase Loading" in ready["message"]
    assert (status["replicas"], status["readyReplicas"]) == (1, 0)
    degraded = c.get_condition(status["conditions"], c.DEGRADED) or {}
    assert degraded["status"] == "False"


def test_awake_is_as_expected() -> None:
    status = compute_status(_obs(engine_ready=1), None)
    ready = c.get_condition(status["conditions"], c.READY) or {}
    assert ready["reason"] == Reason.AS_EXPECTED and (status["replicas"], status["readyReplicas"]) == (1, 1)


def test_the_trainer_of_a_bigmodel_reads_its_weight_cache() -> None:
    from bigmodel_operator.api import FineTuneJobSpec
    from bigmodel_operator.api.bigmodel import WeightCacheSpec
    from bigmodel_operator.builders.trainer_job import build_job
    from bigmodel_operator.builders.volumes import Mounts

    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": {"bigModelRef": {"name": "tiny"}},
            "dataset": {"uri": "s3://data/chats.jsonl", "format": "chat"},
            "method": {"type": "lora"},
            "output": {"uri": "s3://out/tiny-lora"},
        }
    )
    body = {"metadata": {"name": "ftj", "namespace": "ns", "uid": "u2"}, "kind": "FineTuneJob"}
    config_map = {
        "metadata": {"name": "ftj-config", "annotations": {"bigmodel.io/spec-hash": "h"}},
        "data": {"config.json": "{}"},
    }
    job = build_job(
        body,
        spec,
        0,
        Mounts(root="/mnt/bigmodel"),
        CONFIG,
        config_map,
        weight_cache=WeightCacheSpec(claim_name="weights"),
    )
    pod = job["spec"]["template"]["spec"]
    assert {"name": "weight-cache", "persistentVolumeClaim": {"claimName": "weights"}} in pod["volumes"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["BIGMODEL_S3_CACHE"] == "/mnt/bigmodel/weight-cache/s3"  # the same folder per URI as serving
