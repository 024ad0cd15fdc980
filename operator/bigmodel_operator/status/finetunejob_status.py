"""Translate a FineTuneJob's Job and trainer pod into phase, conditions and times.

The trainer itself writes status.progress, checkpoint, adapterUri and redactions; this module owns
the rest, so the two writers never overwrite each other (merge patches of disjoint fields).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bigmodel_operator import conditions as c
from bigmodel_operator.conditions import Blocker, Reason, set_condition

_JOB_REASONS = {
    "DeadlineExceeded": Reason.DEADLINE_EXCEEDED,
    "BackoffLimitExceeded": Reason.BACKOFF_LIMIT_EXCEEDED,
}
_TRAINER_REASONS = {
    "DatasetInvalid": Reason.DATASET_INVALID,
    "OutOfMemory": Reason.OUT_OF_MEMORY,
    "NoMatchingFeedback": Reason.NO_MATCHING_FEEDBACK,
}


@dataclass
class FineTuneJobObservation:
    """Everything the status of one FineTuneJob is computed from."""

    generation: int | None
    plan: dict[str, Any] | None
    plan_reason: str
    plan_message: str
    job_name: str
    output_uri: str
    base_model_uri: str | None = None
    blockers: list[Blocker] = field(default_factory=list)
    warnings: list[Blocker] = field(default_factory=list)
    job: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    cond = c.get_condition((job.get("status") or {}).get("conditions"), type_)
    return cond if cond and cond.get("status") == "True" else None


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")
        if state:
            return dict(state)
    return None


def failure_reason(job: dict[str, Any], pods: list[dict[str, Any]]) -> tuple[str, str]:
    """The most specific reason for a failed Job: the trainer's own word first, then the Job's."""
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True):
        term = _terminated(pod)
        if not term:
            continue
        if term.get("reason") == "OOMKilled":
            return Reason.OUT_OF_MEMORY, "the trainer was killed for exceeding its memory limit (OOMKilled)"
        try:
            report = json.loads(term.get("message") or "")
        except ValueError:
            report = None
        if isinstance(report, dict) and report.get("reason"):
            reason = _TRAINER_REASONS.get(report["reason"], Reason.TRAINING_ERROR)
            return reason, str(report.get("message", ""))[:2000]
        if term.get("exitCode"):
            text = (term.get("message") or "").strip()[-1500:]
            return Reason.TRAINING_ERROR, f"trainer exited with code {term['exitCode']}" + (f": {text}" if text else "")
    failed = _job_condition(job, "Failed") or {}
    return _JOB_REASONS.get(failed.get("reason", ""), Reason.TRAINING_ERROR), failed.get("message", "the Job failed")


def _unschedulable(pods: list[dict[str, Any]]) -> str | None:
    """The scheduler's explanation when the training pod cannot be placed (e.g. unbound PVC, no GPU)."""
    for pod in pods:
        cond = c.get_condition((pod.get("status") or {}).get("conditions"), "PodScheduled")
        if cond and cond.get("status") == "False" and cond.get("message"):
            return str(cond["message"])
    return None


def _running(pods: list[dict[str, Any]]) -> bool:
    return any((p.get("status") or {}).get("phase") == "Running" for p in pods)


def compute_status(obs: FineTuneJobObservation, previous: dict[str, Any] | None) -> dict[str, Any]:
    """Our part of the status: phase, conditions, times, job name and plan."""
    gen = obs.generation
    prev = previous or {}
    conds = list(prev.get("conditions") or [])
    planned = obs.plan_reason == Reason.PLANNED
    conds = set_condition(conds, "Planned", planned, obs.plan_reason, obs.plan_message, gen)
    status: dict[str, Any] = {"observedGeneration": gen, "jobName": obs.job_name, "baseModelUri": obs.base_model_uri}
    if obs.plan is not None:
        status["plan"] = obs.plan
    job = obs.job
    if obs.blockers and job is None:
        reason, message = obs.blockers[0].reason, "; ".join(b.message for b in obs.blockers)
        # The spec is immutable: a plan error it causes is final.
        final = reason in c.BLOCKING_PLAN_REASONS and reason != Reason.PLANNING_TIMED_OUT
        phase = "Failed" if final else "Pending"
        conds = set_condition(conds, c.COMPLETE, False, reason, message, gen)
        conds = set_condition(conds, c.FAILED, phase == "Failed", reason, message, gen)
    elif job is None:
        phase = "Pending"
        conds = set_condition(conds, c.COMPLETE, False, Reason.PENDING, "creating the training Job", gen)
    elif _job_condition(job, "Complete"):
        phase = "Succeeded"
        conds = set_condition(conds, c.COMPLETE, True, Reason.SUCCEEDED, f"adapter written to {obs.output_uri}", gen)
        conds = set_condition(conds, c.FAILED, False, Reason.SUCCEEDED, "training finished", gen)
        status["completionTime"] = (job.get("status") or {}).get("completionTime") or prev.get("completionTime")
        status["adapterUri"] = prev.get("adapterUri") or obs.output_uri
    elif _job_condition(job, "Failed"):
        phase = "Failed"
        reason, message = failure_reason(job, obs.pods)
        conds = set_condition(conds, c.COMPLETE, False, reason, message, gen)
        conds = set_condition(conds, c.FAILED, True, reason, message, gen)
        failed = _job_condition(job, "Failed") or {}
        status["completionTime"] = failed.get("lastTransitionTime") or prev.get("completionTime")
    elif _running(obs.pods) or ((job.get("status") or {}).get("ready") or 0) > 0:
        phase = "Running"
        conds = set_condition(conds, c.COMPLETE, False, Reason.RUNNING, "training", gen)
    else:
        phase = "Pending"
        message = "waiting for the training pod to be scheduled and started"
        reason = Reason.PENDING
        if obs.warnings:
            reason = obs.warnings[0].reason
            message = "; ".join([message, *(w.message for w in obs.warnings)])
        if unschedulable := _unschedulable(obs.pods):
            message = f"{message}; scheduler: {unschedulable}"
        conds = set_condition(conds, c.COMPLETE, False, reason, message, gen)
    if phase in {"Running", "Succeeded", "Failed"} and job is not None:
        start = (job.get("status") or {}).get("startTime") or prev.get("startTime")
        if start:
            status["startTime"] = start
    if phase in {"Pending", "Running"}:
        conds = set_condition(conds, c.FAILED, False, phase, "not failed", gen)
    status["phase"] = phase
    status["conditions"] = conds
    return {k: v for k, v in status.items() if v is not None}
