"""Cold starts, scale to zero and cost in a BigModel's status, on the real apiserver with the real operator.

KubeRay and Ray are not run: a worker pod (KWOK runs it on a fake node) stands for the Ray worker KubeRay
would create, and the test writes `status.replicaStartups` and `status.usage` with merge patches, as the
engine replica and the quota actor do (the CRD must keep every field they send). The operator joins the
pod's phases with the replica's, counts the pod's CPU-seconds and the tokens, and says ScaledToZero when
the replica is gone.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kuberay_standin import kuberay_serving_status

from .conftest import GROUP, VERSION, condition, load_example, or_none

pytestmark = pytest.mark.usefixtures("operator_process")
NAME = "tiny-cpu"


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _bigmodel(custom: Any, namespace: str) -> Any:
    return or_none(custom.get_namespaced_custom_object, GROUP, VERSION, namespace, "bigmodels", NAME)


def _worker_pod(namespace: str) -> Any:
    from kubernetes import client

    labels = {
        "bigmodel.io/bigmodel": NAME,
        "app.kubernetes.io/managed-by": "bigmodel-operator",
        "app.kubernetes.io/component": "model-server",
        "ray.io/node-type": "worker",
    }
    resources = client.V1ResourceRequirements(requests={"cpu": "1"}, limits={"cpu": "1"})
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=f"{NAME}-worker-1", labels=labels),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="ray-worker", image="example.invalid/ray:0", resources=resources)]
        ),
    )


def _status_patch(custom: Any, namespace: str, status: dict[str, Any]) -> None:
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "bigmodels", NAME, {"status": status})


def test_cold_start_phases_cost_and_scale_to_zero_in_status(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    from kubernetes import client

    body = load_example("bigmodel-tiny-cpu.yaml")
    body["spec"]["scaling"] = {"minReplicas": 0, "maxReplicas": 1, "idleSeconds": 60, "wakeTimeoutSeconds": 120}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", body)
    wait_until(lambda: or_none(custom.get_namespaced_custom_object, "ray.io", "v1", namespace, "rayservices", NAME))
    custom.patch_namespaced_custom_object_status(
        "ray.io", "v1", namespace, "rayservices", NAME, {"status": kuberay_serving_status(NAME, 1)}
    )
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(namespace, _worker_pod(namespace))
    running = wait_until(
        lambda: (p := core.read_namespaced_pod(f"{NAME}-worker-1", namespace)).status.phase == "Running" and p,
        timeout=60,
    )
    started = running.status.container_statuses[0].state.running.started_at

    # The Ray autoscaler started a worker for a replica that has not reported yet: a cold start in progress.
    # The pod's event and the RayService's status reach the operator by two watches, so the status may show
    # the phase one write before Ready says Waking: wait for both.
    def starting_ray() -> Any:
        b = _bigmodel(custom, namespace)
        phase = ((b or {}).get("status") or {}).get("startup", {}).get("phase")
        return phase == "StartingRay" and condition(b, "Ready").get("reason") == "Waking" and b

    bm = wait_until(starting_ray, timeout=30)
    assert [p["name"] for p in bm["status"]["startup"]["phases"]] == ["Scheduling", "PullingImage", "StartingRay"]
    assert condition(bm, "Ready")["reason"] == "Waking", condition(bm, "Ready")

    constructed = max(started.astimezone(UTC), datetime.now(UTC) - timedelta(seconds=30))
    report = {
        "pod": f"{NAME}-worker-1",
        "firstOnPod": True,
        "constructedAt": _stamp(constructed + timedelta(seconds=1)),
        "phases": [
            {
                "name": "Downloading",
                "startedAt": _stamp(constructed + timedelta(seconds=1.2)),
                "finishedAt": _stamp(constructed + timedelta(seconds=3.2)),
                "bytesDone": 1_000_000,
                "bytesTotal": 1_000_000,
                "cached": False,
                "source": "download",
            },
            {
                "name": "Loading",
                "startedAt": _stamp(constructed + timedelta(seconds=3.3)),
                "finishedAt": _stamp(constructed + timedelta(seconds=5.3)),
                "source": "vllm",
            },
        ],
        "readyAt": _stamp(constructed + timedelta(seconds=6)),
        "updatedAt": _stamp(constructed + timedelta(seconds=6)),
    }
    _status_patch(custom, namespace, {"replicaStartups": {"r-abc": report}})

    def started_once() -> Any:
        b = _bigmodel(custom, namespace)
        status = (b or {}).get("status") or {}
        return status.get("lastColdStart") and not status.get("startup") and b

    bm = wait_until(started_once, timeout=30)
    last = bm["status"]["lastColdStart"]
    names = [p["name"] for p in last["phases"]]
    assert names == ["Scheduling", "PullingImage", "StartingRay", "Downloading", "Loading", "Ready"], last
    assert last["phase"] == "Ready" and last["replica"] == "r-abc"
    download = next(p for p in last["phases"] if p["name"] == "Downloading")
    assert download["seconds"] == 2.0 and download["bytesTotal"] == 1_000_000
    assert condition(bm, "Ready")["reason"] == "AsExpected"
    assert (bm["status"]["replicas"], bm["status"]["readyReplicas"]) == (1, 1)

    now = datetime.now(UTC)
    usage = {
        "since": _stamp(now - timedelta(seconds=60)),
        "reportedAt": _stamp(now),
        "requests": 3,
        "promptTokens": 300,
        "completionTokens": 30,
        "busySeconds": 4.5,
        "byKey": {"default": {"requests": 3, "promptTokens": 300, "completionTokens": 30}},
        "byModel": {"tiny-llama": {"requests": 3, "promptTokens": 300, "completionTokens": 30}},
    }
    _status_patch(custom, namespace, {"usage": usage})

    def costed() -> Any:
        b = _bigmodel(custom, namespace)
        total = (((b or {}).get("status") or {}).get("cost") or {}).get("total") or {}
        return total.get("promptTokens") == 300 and b

    cost = wait_until(costed, timeout=30)["status"]["cost"]
    total = cost["total"]
    assert 0 < total["busyCpuSeconds"] <= total["cpuSeconds"], cost  # busy: 4.5 s x 1 core, at most what was held
    assert total["idleCpuSeconds"] == round(total["cpuSeconds"] - total["busyCpuSeconds"], 1)
    assert cost["byKey"]["default"]["promptTokens"] == 300 and cost["byModel"]["tiny-llama"]["completionTokens"] == 30
    assert cost["pricedResource"] == "CPU-core-hour"

    _status_patch(custom, namespace, {"replicaStartups": {"r-abc": None}})  # the replica stopped (scale to zero)

    def at_zero() -> Any:
        b = _bigmodel(custom, namespace)
        return b and condition(b, "Ready").get("reason") == "ScaledToZero" and b

    bm = wait_until(at_zero, timeout=30)
    assert condition(bm, "Ready")["status"] == "True"
    assert (bm["status"]["replicas"], bm["status"]["readyReplicas"]) == (0, 0)  # the idle pod is not a replica
    events = core.list_namespaced_event(namespace).items
    started_events = [e for e in events if e.reason == "ReplicaStarted"]
    assert started_events and "Downloading 2 s (1.0 MB)" in started_events[0].message, [e.message for e in events]
