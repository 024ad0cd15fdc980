"""Pure status logic: conditions keep transition times, RayService/Job states map to honest reasons."""

from __future__ import annotations

from typing import Any

from bigmodel_operator import conditions as c
from bigmodel_operator.conditions import Reason, set_condition
from bigmodel_operator.status.bigmodel import BigModelObservation, Blocker, compute_status
from bigmodel_operator.status.finetunejob import FineTuneJobObservation
from bigmodel_operator.status.finetunejob import compute_status as ftj_status


def test_transition_time_moves_only_on_flip() -> None:
    conds = set_condition(None, "Ready", False, "A", "m", 1, timestamp="t1")
    conds = set_condition(conds, "Ready", False, "B", "m2", 2, timestamp="t2")
    assert conds[0]["lastTransitionTime"] == "t1" and conds[0]["reason"] == "B" and conds[0]["observedGeneration"] == 2
    conds = set_condition(conds, "Ready", True, "C", "m3", 2, timestamp="t3")
    assert conds[0]["lastTransitionTime"] == "t3"


def _rayservice(endpoints: int, app_status: str, ready_workers: int = 1) -> dict[str, Any]:
    return {
        "status": {
            "numServeEndpoints": endpoints,
            "conditions": [{"type": "Ready", "status": "True" if endpoints else "False", "reason": "x", "message": ""}],
            "activeServiceStatus": {
                "applicationStatuses": {
                    "m": {"status": app_status, "message": "boom" if app_status != "RUNNING" else ""}
                },
                "rayClusterStatus": {"readyWorkerReplicas": ready_workers, "desiredWorkerReplicas": 2},
            },
        }
    }


def _obs(**kw: Any) -> BigModelObservation:
    base = {
        "generation": 3,
        "desired_replicas": 2,
        "plan": None,
        "plan_reason": Reason.PLANNED,
        "plan_message": "ok",
        "url": "http://m/v1",
    }
    base.update(kw)
    return BigModelObservation(**base)


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found = c.get_condition(status["conditions"], type_)
    assert found is not None
    return found


def test_ready_when_endpoints_and_app_running() -> None:
    status = compute_status(_obs(rayservice=_rayservice(2, "RUNNING", 2)), None)
    assert _cond(status, "Ready")["status"] == "True"
    assert status["readyReplicas"] == 2 and status["observedGeneration"] == 3 and status["url"] == "http://m/v1"
    assert _cond(status, "Degraded")["status"] == "False"


def test_degraded_when_some_replicas_missing() -> None:
    status = compute_status(_obs(rayservice=_rayservice(1, "RUNNING", 1)), None)
    assert _cond(status, "Ready")["status"] == "True"
    assert _cond(status, "Degraded")["status"] == "True"


def test_failed_application_is_reported_with_its_message() -> None:
    status = compute_status(_obs(rayservice=_rayservice(0, "DEPLOY_FAILED")), None)
    ready = _cond(status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == Reason.RAYSERVICE_FAILED and "boom" in ready["message"]


def test_blocker_wins_and_is_actionable() -> None:
    obs = _obs(blockers=[Blocker(Reason.GATED_MODEL_NO_TOKEN, "Secret hf-token missing")])
    ready = _cond(compute_status(obs, None), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", Reason.GATED_MODEL_NO_TOKEN)


def test_no_gpu_nodes_warning_explains_pending() -> None:
    obs = _obs(warnings=[Blocker(Reason.NO_MATCHING_GPU_NODES, "no node carries X", blocks_deploy=False)])
    ready = _cond(compute_status(obs, None), "Ready")
    assert ready["reason"] == Reason.NO_MATCHING_GPU_NODES and "no node carries X" in ready["message"]


def test_status_is_stable_when_nothing_changes() -> None:
    obs = _obs(rayservice=_rayservice(2, "RUNNING", 2))
    first = compute_status(obs, None)
    assert compute_status(obs, first) == first


def _job(cond: str | None, reason: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"startTime": "2026-01-01T00:00:00Z"}
    if cond:
        status["conditions"] = [
            {
                "type": cond,
                "status": "True",
                "reason": reason,
                "message": "m",
                "lastTransitionTime": "2026-01-01T01:00:00Z",
            }
        ]
        status["completionTime"] = "2026-01-01T01:00:00Z" if cond == "Complete" else None
    return {"status": status}


def _pod(phase: str, message: str | None = None, reason: str = "Error") -> dict[str, Any]:
    pod: dict[str, Any] = {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": phase}}
    if message is not None:
        pod["status"]["containerStatuses"] = [
            {"state": {"terminated": {"exitCode": 3, "reason": reason, "message": message}}}
        ]
    return pod


def _ftj(job: dict[str, Any] | None, pods: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    obs = FineTuneJobObservation(1, None, Reason.PLANNED, "", "j-train", "pvc://out/a", job=job, pods=pods or [])
    return ftj_status(obs, None)


def test_finetunejob_phases() -> None:
    assert _ftj(None)["phase"] == "Pending"
    assert _ftj(_job(None), [_pod("Running")])["phase"] == "Running"
    done = _ftj(_job("Complete"), [_pod("Succeeded")])
    assert done["phase"] == "Succeeded" and done["completionTime"] and done["adapterUri"] == "pvc://out/a"


def test_finetunejob_failure_reason_from_trainer() -> None:
    failed = _ftj(
        _job("Failed", "PodFailurePolicy"),
        [_pod("Failed", '{"reason": "DatasetInvalid", "message": "line 3: bad JSON"}')],
    )
    cond = _cond(failed, "Failed")
    assert failed["phase"] == "Failed" and cond["reason"] == Reason.DATASET_INVALID and "line 3" in cond["message"]
    oom = _ftj(_job("Failed", "BackoffLimitExceeded"), [_pod("Failed", "", reason="OOMKilled")])
    assert _cond(oom, "Failed")["reason"] == Reason.OUT_OF_MEMORY
    deadline = _ftj(_job("Failed", "DeadlineExceeded"), [])
    assert _cond(deadline, "Failed")["reason"] == Reason.DEADLINE_EXCEEDED
