"""Several GPUs and nodes in the operator: what the planner proposes, what the Job looks like for
each layout (one pod with N workers; an Indexed Job + headless Service), Kueue's queue label and
suspend, and the Queued phase."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bigmodel_operator import crdgen
from bigmodel_operator.api import FineTuneJobSpec
from bigmodel_operator.builders.trainer_job import (
    KUEUE_QUEUE_LABEL,
    Layout,
    build_config_map,
    build_job,
    build_rendezvous_service,
    render_trainer_config,
    trainer_command,
)
from bigmodel_operator.builders.volumes import Mounts
from bigmodel_operator.conditions import Reason
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.reconcile.model_source import ModelConfigResult
from bigmodel_operator.reconcile.plan_glue import training_plan
from bigmodel_operator.status.finetunejob_status import FineTuneJobObservation, compute_status
from bigmodel_training.config import TrainerConfig

REPO = Path(__file__).parents[3]
EXAMPLE = REPO / "docs" / "examples" / "finetunejob-lora.yaml"
CONFIGS = REPO / "tests" / "data" / "model-configs"


def _body(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"].update(namespace="team-a", uid="00000000-0000-0000-0000-000000000001", generation=1)
    body["spec"].pop("deployTo")
    body["spec"]["baseModel"] = {"uri": "hf://meta-llama/Llama-3.1-70B"}
    body["spec"].update(spec)
    return body


def _children(body: dict[str, Any], layout: Layout) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = FineTuneJobSpec.model_validate(body["spec"])
    mounts = Mounts(root=OperatorConfig().model_mount_root)
    rendered = render_trainer_config(body, spec, "hf://x/y", None, mounts, layout=layout)
    job = build_job(
        body, spec, layout.gpus, mounts, OperatorConfig(), build_config_map(body, rendered), nodes=layout.nodes
    )
    return rendered, job


def _model(name: str) -> ModelConfigResult:
    return ModelConfigResult(json.loads((CONFIGS / f"{name}.json").read_text()))


def test_one_pod_with_eight_gpus_runs_eight_workers_through_torchrun() -> None:
    rendered, job = _children(_body(), Layout(gpus=8, nodes=1, strategy="ddp"))
    pod = job["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert command[:4] == ["python", "-m", "bigmodel_training", "launch"]
    assert "--nproc-per-node=8" in command and "--standalone" in command
    assert command[-4:] == ["-m", "bigmodel_training", "--config", "/etc/bigmodel/trainer/config.json"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert "completionMode" not in job["spec"] and "subdomain" not in pod
    assert TrainerConfig.model_validate(rendered).distributed.strategy == "ddp"


def test_several_pods_are_an_indexed_job_meeting_through_a_headless_service() -> None:
    body = _body(backoffLimit=3)
    rendered, job = _children(body, Layout(gpus=4, nodes=3, strategy="fsdp"))
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["backoffLimit"] == 9  # a gang failure costs one pod failure per pod
    service = build_rendezvous_service(body)
    assert pod["subdomain"] == service["metadata"]["name"] == job["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())
    command = pod["containers"][0]["command"]
    name = job["metadata"]["name"]
    for flag in ("--nnodes=3", "--nproc-per-node=4", "--rdzv-backend=c10d", f"--rdzv-endpoint={name}-0.{name}:29400"):
        assert flag in command
    assert "--max-restarts=3" in command
    assert TrainerConfig.model_validate(rendered).distributed.strategy == "fsdp"


def test_cpu_pods_run_one_worker_each() -> None:
    _, job = _children(_body(), Layout(gpus=0, nodes=2))
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--nproc-per-node=1" in command and "--nnodes=2" in command
    assert "nvidia.com/gpu" not in job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_one_gpu_keeps_the_plain_trainer_command() -> None:
    assert trainer_command("x", Layout(gpus=1), 2, 300) == [
        "python", "-m", "bigmodel_training", "--config", "/etc/bigmodel/trainer/config.json"
    ]  # fmt: skip


def test_queue_name_labels_the_job_and_creates_it_suspended() -> None:
    _, job = _children(_body(queueName="gpu-team-a"), Layout())
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu-team-a" and job["spec"]["suspend"] is True
    body = _body()
    body["metadata"]["labels"] = {KUEUE_QUEUE_LABEL: "from-label", "team": "a"}
    _, job = _children(body, Layout())
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "from-label" and job["spec"]["suspend"] is True
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert KUEUE_QUEUE_LABEL not in pod_labels and pod_labels["team"] == "a"
    _, plain = _children(_body(), Layout())
    assert "suspend" not in plain["spec"] and KUEUE_QUEUE_LABEL not in plain["metadata"]["labels"]


def test_the_one_gpu_rule_is_gone_and_qlora_is_never_sharded() -> None:
    from bigmodel_training.data_parallel import resolve_strategy
    from bigmodel_training.distributed import World
    from bigmodel_training.errors import UnsupportedError

    rules = [r["rule"] for r in crdgen.openapi_schema(FineTuneJobSpec)["x-kubernetes-validations"]]
    assert not any("gpu.count <= 1" in r for r in rules)
    assert any("qlora" in r and "fsdp" in r for r in rules)
    two = World(rank=0, size=2, local_rank=0, local_size=2)
    with pytest.raises(UnsupportedError, match="Params4bit"):
        resolve_strategy("fsdp", "qlora", two)
    assert resolve_strategy("auto", "qlora", two) == "ddp"
    assert resolve_strategy("auto", "full", two) == "fsdp"
    assert resolve_strategy("fsdp", "lora", World()) == "single"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # 70B LoRA, batch 1: sharded over 3 GPUs of one pod
        ({"hyperparameters": {"batchSize": 1, "maxSeqLength": 2048}}, (3, 1, "fsdp")),
        # batch 8: more than a node's 8 GPUs, so 2 pods × 8
        ({"hyperparameters": {"batchSize": 8, "maxSeqLength": 2048}}, (8, 2, "fsdp")),
        # a count per pod is kept; the plan adds pods (12 GPUs suffice)
        (
            {"hyperparameters": {"batchSize": 8, "maxSeqLength": 2048}, "resources": {"gpu": {"count": 4}}},
            (4, 3, "fsdp"),
        ),
        # QLoRA fits one GPU
        ({"method": {"type": "qlora"}, "hyperparameters": {"batchSize": 1, "maxSeqLength": 2048}}, (1, 1, "auto")),
    ],
)
def test_the_planner_proposes_gpus_pods_and_strategy(spec: dict[str, Any], expected: tuple[int, int, str]) -> None:
    body = _body()
    body["spec"].pop("resources")
    body["spec"].update(spec)
    result = training_plan(
        FineTuneJobSpec.model_validate(body["spec"]), _model("meta-llama--Llama-3.1-70B"), OperatorConfig()
    )
    assert result.reason == Reason.PLANNED, result.message
    assert (result.gpus, result.nodes, result.strategy) == expected
    assert result.plan is not None and result.plan.layout in result.message
    if expected[1] > 1 and "resources" not in spec:
        assert "pods because one node has 8 GPUs" in result.plan.layout


def test_eight_gpus_for_a_model_that_fits_one_is_ddp_and_says_why() -> None:
    body = _body(resources={"gpu": {"count": 8}}, hyperparameters={"batchSize": 8, "maxSeqLength": 2048})
    result = training_plan(
        FineTuneJobSpec.model_validate(body["spec"]), _model("meta-llama--Llama-3.1-8B"), OperatorConfig()
    )
    assert (result.gpus, result.nodes, result.strategy) == (8, 1, "ddp")
    assert result.plan is not None and "fits on one GPU" in result.plan.layout


def test_ddp_for_a_model_that_needs_sharding_does_not_fit() -> None:
    body = _body(distributed={"strategy": "ddp"}, hyperparameters={"batchSize": 1, "maxSeqLength": 2048})
    result = training_plan(
        FineTuneJobSpec.model_validate(body["spec"]), _model("meta-llama--Llama-3.1-70B"), OperatorConfig()
    )
    assert result.reason == Reason.MODEL_TOO_LARGE_FOR_GPU
    assert "strategy fsdp" in result.message


def _observation(job: dict[str, Any], **extra: Any) -> FineTuneJobObservation:
    return FineTuneJobObservation(1, None, Reason.PLANNED, "", "j-train", "pvc://out/a", job=job, **extra)


def test_a_suspended_job_is_queued_with_kueues_reason() -> None:
    job = {"metadata": {"name": "j-train"}, "spec": {"suspend": True}, "status": {}}
    status = compute_status(
        _observation(job, queue="gpu-team-a", queue_message="couldn't assign flavors: insufficient quota"), None
    )
    assert status["phase"] == "Queued"
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert complete["reason"] == "Queued"
    assert "LocalQueue gpu-team-a" in complete["message"] and "insufficient quota" in complete["message"]
    job["spec"]["suspend"] = False
    job["status"] = {"ready": 2}
    assert compute_status(_observation(job, queue="gpu-team-a"), status)["phase"] == "Running"


def test_a_nan_stop_is_its_own_failure_reason() -> None:
    job = {
        "metadata": {"name": "j-train"},
        "spec": {},
        "status": {"conditions": [{"type": "Failed", "status": "True"}]},
    }
    pod = {
        "metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 7, "message": json.dumps(
            {"reason": "LossNotFinite", "message": "training diverged at step 12: the training loss is nan"}
        )}}}]},
    }  # fmt: skip
    status = compute_status(_observation(job, pods=[pod]), None)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (status["phase"], failed["reason"]) == ("Failed", "LossNotFinite")
    assert "diverged at step 12" in failed["message"]
