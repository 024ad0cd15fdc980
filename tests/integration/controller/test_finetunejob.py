"""FineTuneJob end to end on the real control plane: Job on a fake GPU node, KWOK finishes the pod."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from manifests import cluster_finetunejob

from .conftest import GROUP, VERSION, condition, or_none

pytestmark = pytest.mark.usefixtures("operator_process")


def _ftj(name: str = "tune", **annotations: str) -> dict[str, Any]:
    return cluster_finetunejob(name, **annotations)


def _get(custom: Any, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", name)
    return obj


def _batch(api_client: Any) -> Any:
    from kubernetes import client

    return client.BatchV1Api(api_client)


def _job(api_client: Any, namespace: str, name: str) -> Any:
    return or_none(_batch(api_client).read_namespaced_job, name, namespace)


def test_job_runs_on_gpu_node_and_succeeds(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    from kubernetes import client

    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", _ftj())
    job = wait_until(lambda: _job(api_client, namespace, "tune-train"), timeout=30)
    container = job.spec.template.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert container.command[-1] == "/etc/bigmodel/trainer/config.json"
    core = client.CoreV1Api(api_client)
    assert core.read_namespaced_config_map("tune-trainer-config", namespace).data["config.json"]
    rbac = client.RbacAuthorizationV1Api(api_client)
    role = rbac.read_namespaced_role("tune-trainer", namespace)
    assert role.rules[0].resource_names == ["tune"]

    def pod_node() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector="bigmodel.io/finetunejob=tune").items
        return pods and pods[0].spec.node_name

    assert wait_until(pod_node, timeout=60) == "gpu-h100-0"
    done = wait_until(
        lambda: (f := _get(custom, namespace, "tune")) and f.get("status", {}).get("phase") == "Succeeded" and f,
        timeout=90,
    )
    status = done["status"]
    assert status["completionTime"] and status["startTime"] and status["adapterUri"] == "file:///output/tune"
    assert condition(done, "Complete")["status"] == "True"
    assert status["plan"]["gpusNeeded"] == 1 if "plan" in status else True


def test_the_trainer_pod_requests_ephemeral_storage_and_bounds_every_empty_dir(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    """Issue 21: the trainer's local disk is requested and bounded — its model cache and /tmp cannot fill the
    node. Read from the pod the Job controller made, as the kubelet gets it."""
    from kubernetes import client

    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", _ftj("disk"))
    core = client.CoreV1Api(api_client)
    pod = wait_until(
        lambda: next(
            iter(core.list_namespaced_pod(namespace, label_selector="bigmodel.io/finetunejob=disk").items), None
        ),
        timeout=60,
    )
    containers = [*(pod.spec.init_containers or []), *pod.spec.containers]
    for container in containers:
        assert container.resources.requests.get("ephemeral-storage"), container.name
        assert container.resources.limits.get("ephemeral-storage"), container.name
    empty_dirs = [v for v in pod.spec.volumes if v.empty_dir is not None]
    assert empty_dirs, "the trainer mounts its caches and /tmp as emptyDirs"
    for volume in empty_dirs:
        assert volume.empty_dir.size_limit, volume.name


def test_failing_pod_fails_the_job_with_its_reason(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    body = _ftj("broken", **{"bigmodel.io/kwok-fail": "true"})
    body["spec"]["backoffLimit"] = 0
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    failed = wait_until(
        lambda: (f := _get(custom, namespace, "broken")) and f.get("status", {}).get("phase") == "Failed" and f,
        timeout=90,
    )
    cond = condition(failed, "Failed")
    assert cond["status"] == "True"
    assert cond["reason"] == "TrainingError" and "exited with code 1" in cond["message"]


def test_progress_reported_by_trainer_is_kept(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    """The trainer patches status.progress; the operator's own status writes never overwrite it."""
    body = _ftj("slow")
    body["spec"]["resources"]["gpu"]["product"] = "NVIDIA-H200"  # no such node: stays Pending
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    pending = wait_until(
        lambda: (
            (f := _get(custom, namespace, "slow"))
            and f.get("status", {}).get("phase") == "Pending"
            and condition(f, "Complete").get("reason") == "NoMatchingGPUNodes"
            and f
        ),
        timeout=30,
    )
    assert "NVIDIA-H200" in condition(pending, "Complete")["message"]
    progress = {"status": {"progress": {"step": 5, "totalSteps": 10, "percent": 50, "loss": 1.5}}}
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "finetunejobs", "slow", progress)
    import time

    time.sleep(5)
    assert _get(custom, namespace, "slow")["status"]["progress"]["percent"] == 50


def test_delete_removes_job_through_gc(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", _ftj("gone"))
    wait_until(lambda: _job(api_client, namespace, "gone-train"), timeout=30)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "gone")
    wait_until(lambda: _job(api_client, namespace, "gone-train") is None, timeout=60, what="Job GC")


LLAMA_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 131072, "torch_dtype": "bfloat16",
}  # fmt: skip


def test_eight_gpus_run_eight_ranks_in_one_pod(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    """gpu.count 8 is admitted and becomes one pod whose command starts 8 torchrun workers (issue 20)."""
    body = _ftj("eight-gpus")
    body["spec"]["resources"]["gpu"]["count"] = 8
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    job = wait_until(lambda: _job(api_client, namespace, "eight-gpus-train"), timeout=60, what="the Job")
    assert job.spec.completion_mode in (None, "NonIndexed") and (job.spec.parallelism or 1) == 1
    container = job.spec.template.spec.containers[0]
    assert "--nproc-per-node=8" in container.command and "--standalone" in container.command, container.command
    assert container.resources.limits["nvidia.com/gpu"] == "8"


def test_several_nodes_are_an_indexed_job_with_a_headless_service(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    """distributed.nodes 2: an Indexed Job of 2 pods and the headless Service torchrun meets on (issue 20)."""
    from kubernetes import client

    body = _ftj("two-nodes")
    body["spec"]["resources"]["gpu"]["count"] = 2
    body["spec"]["distributed"] = {"nodes": 2}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    job = wait_until(lambda: _job(api_client, namespace, "two-nodes-train"), timeout=60, what="the Job")
    assert job.spec.completion_mode == "Indexed"
    assert (job.spec.completions, job.spec.parallelism) == (2, 2)
    command = job.spec.template.spec.containers[0].command
    assert "--nnodes=2" in command and "--nproc-per-node=2" in command, command
    assert any(arg.startswith("--rdzv-endpoint=two-nodes-train-0.two-nodes-train:") for arg in command), command
    service = client.CoreV1Api(api_client).read_namespaced_service("two-nodes-train", namespace)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses


def test_a_queued_job_is_created_suspended_for_kueue(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    """spec.queueName: the Job carries Kueue's queue label and starts suspended; the FineTuneJob says Queued."""
    body = _ftj("queued")
    body["spec"]["queueName"] = "gpu-queue"
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    job = wait_until(lambda: _job(api_client, namespace, "queued-train"), timeout=60, what="the Job")
    assert job.spec.suspend is True
    assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    wait_until(
        lambda: (_get(custom, namespace, "queued").get("status") or {}).get("phase") == "Queued",
        timeout=60,
        what="phase Queued",
    )


def test_grace_period_comes_from_the_plan(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    from bigmodel_operator.api import FineTuneJobSpec
    from bigmodel_operator.builders.trainer_job import GRACE_DEFAULT_SECONDS, termination_grace_seconds

    body = _ftj("graceful")
    body["spec"]["baseModel"]["config"] = LLAMA_8B_CONFIG
    body["spec"]["resources"]["gpu"]["product"] = "NVIDIA-H200"  # no such node: the pod stays Pending
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    job = wait_until(lambda: _job(api_client, namespace, "graceful-train"), timeout=60)
    plan = wait_until(lambda: (_get(custom, namespace, "graceful").get("status") or {}).get("plan"), timeout=30)
    grace = job.spec.template.spec.termination_grace_period_seconds
    assert plan["checkpointGiB"] > 0 and plan["microBatchSeconds"] > 0
    assert grace == termination_grace_seconds(FineTuneJobSpec.model_validate(body["spec"]), plan)
    assert grace != GRACE_DEFAULT_SECONDS and grace > 60  # from the plan, not Kubernetes' 30 s


def test_recurrent_model_family_is_refused_with_its_reason(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    body = _ftj("hybrid")
    body["spec"]["baseModel"]["config"] = {
        **LLAMA_8B_CONFIG, "architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next"
    }  # fmt: skip
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    refused = wait_until(
        lambda: (f := _get(custom, namespace, "hybrid")) and condition(f, "Planned").get("reason") and f, timeout=30
    )
    planned = condition(refused, "Planned")
    assert planned["reason"] == "UnsupportedModelFamily", planned
    assert "not supported for fine-tuning" in planned["message"]
    assert _job(api_client, namespace, "hybrid-train") is None
