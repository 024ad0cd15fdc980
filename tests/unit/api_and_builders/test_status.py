"""Pure status logic: conditions keep transition times, RayService/Job states map to honest reasons."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from bigmodel_operator import conditions as c
from bigmodel_operator.conditions import Reason, set_condition
from bigmodel_operator.status.bigmodel_status import BigModelObservation, Blocker, compute_status, startup_overdue
from bigmodel_operator.status.finetunejob_status import FineTuneJobObservation
from bigmodel_operator.status.finetunejob_status import compute_status as ftj_status


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


def _deploying_since(since: str, reason: str = Reason.RAYSERVICE_DEPLOYING) -> dict[str, Any]:
    """A previous status whose RayServiceReady turned False at `since`."""
    return {"conditions": set_condition(None, c.RAYSERVICE_READY, False, reason, "starting", 3, timestamp=since)}


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_startup_overdue_only_after_the_budget() -> None:
    previous = _deploying_since("2026-11-30T07:00:00Z")["conditions"]
    assert startup_overdue(previous, _at("2026-11-30T07:29:59Z")) is None
    assert startup_overdue(previous, _at("2026-11-30T07:30:01Z")) == "2026-11-30T07:00:00Z"
    ready = set_condition(
        None, c.RAYSERVICE_READY, True, Reason.RAYSERVICE_READY, "ok", 3, timestamp="2020-01-01T00:00:00Z"
    )
    assert startup_overdue(ready, _at("2026-11-30T07:30:01Z")) is None
    assert startup_overdue(None, _at("2026-11-30T07:30:01Z")) is None
    garbled = set_condition(None, c.RAYSERVICE_READY, False, "x", "m", 3, timestamp="yesterday")
    assert startup_overdue(garbled, _at("2026-11-30T07:30:01Z")) is None


@pytest.mark.parametrize("endpoints", [0, 1])
def test_slow_start_is_explained_with_where_to_look(endpoints: int) -> None:
    rayservice = _rayservice(0, "DEPLOYING") if not endpoints else _rayservice(0, "RUNNING")
    obs = _obs(rayservice=rayservice, selector="bigmodel.io/bigmodel=m", rayservice_name="m")
    previous = _deploying_since("2026-11-30T07:00:00Z")
    early = compute_status(obs, previous, now=_at("2026-11-30T07:10:00Z"))
    assert _cond(early, "Ready")["reason"] in {Reason.RAYSERVICE_DEPLOYING, Reason.NO_SERVE_ENDPOINTS}
    late = compute_status(obs, previous, now=_at("2026-11-30T08:00:00Z"))
    ready = _cond(late, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", Reason.STARTUP_SLOW)
    assert "not ready since 2026-11-30T07:00:00Z (over 30 min)" in ready["message"]
    assert "kubectl get pods -l bigmodel.io/bigmodel=m" in ready["message"]
    assert "kubectl describe rayservice m" in ready["message"]
    assert _cond(late, c.RAYSERVICE_READY)["lastTransitionTime"] == "2026-11-30T07:00:00Z"
    # Level-based and quiet: the next resync computes the same status, so nothing is written again.
    again = compute_status(obs, late, now=_at("2026-11-30T09:00:00Z"))
    assert again["conditions"] == late["conditions"]


def test_a_failure_or_a_blocker_is_not_called_slow() -> None:
    previous = _deploying_since("2026-11-30T07:00:00Z")
    failed = compute_status(_obs(rayservice=_rayservice(0, "DEPLOY_FAILED")), previous, now=_at("2026-11-30T09:00:00Z"))
    assert _cond(failed, "Ready")["reason"] == Reason.RAYSERVICE_FAILED
    blocked = _obs(rayservice=_rayservice(0, "DEPLOYING"), blockers=[Blocker(Reason.GATED_MODEL_NO_TOKEN, "no token")])
    assert _cond(compute_status(blocked, previous, now=_at("2026-11-30T09:00:00Z")), "Ready")["reason"] == (
        Reason.GATED_MODEL_NO_TOKEN
    )
    no_gpu = _obs(
        rayservice=_rayservice(0, "DEPLOYING"),
        warnings=[Blocker(Reason.NO_MATCHING_GPU_NODES, "no H100 node", blocks_deploy=False)],
    )
    ready = _cond(compute_status(no_gpu, previous, now=_at("2026-11-30T09:00:00Z")), "Ready")
    assert ready["reason"] == Reason.NO_MATCHING_GPU_NODES and "not ready since" in ready["message"]


def test_ready_replicas_are_what_serve_runs_and_the_last_scale_is_kept() -> None:
    scaled = {"from": 1, "to": 2, "reason": "load", "time": "2026-12-06T17:00:00Z"}
    obs = _obs(rayservice=_rayservice(1, "RUNNING", 2), ready_engines=1, last_scaled=scaled)
    status = compute_status(obs, None)
    assert (status["replicas"], status["readyReplicas"]) == (2, 1)  # upscaling: the new one still starts
    assert status["lastScaled"] == scaled
    assert _cond(status, "Degraded")["status"] == "True"
