"""FineTuneJob deployTo → the BigModel's adapter versions and routes, and each job's Promoted condition.

The BigModel's reconcile asks `bigmodel_promotions` what to render (status/promotion.py decides,
purely, from the watch cache and the BigModel's last status). The FineTuneJob's reconcile asks
`promoted_condition` what its Promoted condition says, from its own status.evaluation and the
BigModel's status.adapters. handlers.py connects the two: an event on a FineTuneJob triggers the
BigModel it deploys to, an event on a BigModel triggers its finished FineTuneJobs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bigmodel_operator import conditions as c
from bigmodel_operator.builders.volumes import claims_in_spec, pvc_claim
from bigmodel_operator.reconcile.state import ClusterState
from bigmodel_operator.status.adapter_versions import PromotionResult, job_of, plan_promotions

PROMOTED = "Promoted"
GATE_FAILED = "GateFailed"
NO_HELD_OUT_DATA = "NoHeldOutData"
EVALUATION_PENDING = "EvaluationPending"
BIGMODEL_NOT_FOUND = "BigModelNotFound"
PROMOTION_PENDING = "PromotionPending"
_PHASE_REASONS = {
    "Stable": (True, "Stable"),
    "Candidate": (True, "Canary"),
    "RolledBack": (False, "RolledBack"),
    "Retired": (False, "Superseded"),
    "Waiting": (False, "Pinned"),
    "Refused": (False, "Refused"),
}


def deploying_jobs(state: ClusterState, namespace: str, bigmodel: str) -> list[dict[str, Any]]:
    """FineTuneJob bodies in the watch cache that deploy to this BigModel (an index bucket, by name)."""
    return [body for body in state.deploying_to(namespace, bigmodel) if not _deleting(body)]


def _deleting(body: dict[str, Any]) -> bool:
    return bool(body["metadata"].get("deletionTimestamp"))


def bigmodel_promotions(
    state: ClusterState, body: dict[str, Any], previous_adapters: list[dict[str, Any]] | None
) -> PromotionResult:
    """What the BigModel serves of its FineTuneJobs, and its new status.adapters."""
    meta = body["metadata"]
    jobs = [job_of(ftj) for ftj in deploying_jobs(state, meta["namespace"], meta["name"])]
    decisions = (body.get("status") or {}).get("rolloutDecisions")  # the ingress's, never written here
    result = plan_promotions(jobs, body.get("spec") or {}, previous_adapters, c.now(), decisions)
    result.promotions = replace(result.promotions, report_to=(meta["namespace"], meta["name"]))
    mounted = claims_in_spec(body.get("spec") or {})
    for job in jobs:
        claim = pvc_claim(job.uri)
        if claim and claim not in mounted:
            result.unmounted.append(
                f"FineTuneJob {job.version} writes its adapter to claim {claim}, which the engine pods do not "
                "mount yet: the operator adds the mount, a pod-template change, so KubeRay replaces the Ray "
                "cluster once (the base model loads again, and the new cluster needs room while the old one "
                f"serves). Add {claim} to spec.adapterClaims to mount it from the start"
            )
    return result


def promoted_condition(ftj: dict[str, Any], bigmodel: dict[str, Any] | None) -> tuple[bool, str, str] | None:
    """(status, reason, message) of a finished FineTuneJob's Promoted condition; None when it has none."""
    spec, status = ftj.get("spec") or {}, ftj.get("status") or {}
    deploy = spec.get("deployTo")
    if not deploy or status.get("phase") != "Succeeded":
        return None
    target = deploy.get("bigModel")
    evaluation = status.get("evaluation")
    if not evaluation or evaluation.get("passed") is None:
        return False, EVALUATION_PENDING, "waiting for the trainer's evaluation (status.evaluation)"
    if evaluation.get("passed") is False and evaluation.get("outcome") == "NotCompared":
        return False, NO_HELD_OUT_DATA, f"not promoted to BigModel {target}: {gate_numbers(evaluation)}"
    if evaluation.get("passed") is False:
        return False, GATE_FAILED, f"eval gate failed, not promoted to BigModel {target}: {gate_numbers(evaluation)}"
    if bigmodel is None:
        return False, BIGMODEL_NOT_FOUND, f"BigModel {target} (spec.deployTo.bigModel) does not exist"
    name = ftj["metadata"]["name"]
    entry = next(
        (e for e in (bigmodel.get("status") or {}).get("adapters") or [] if e.get("version") == name),
        None,
    )
    if entry is None:
        return False, PROMOTION_PENDING, f"eval gate passed; waiting for BigModel {target} to serve it"
    promoted, reason = _PHASE_REASONS.get(entry.get("phase", ""), (False, PROMOTION_PENDING))
    where = f"{entry.get('engineName')} on BigModel {target}"
    return promoted, reason, f"{entry.get('phase')}: {where}: {entry.get('message', '')}".rstrip(": ")


def gate_numbers(evaluation: dict[str, Any]) -> str:
    """The gate's numbers in one line, for the condition and the Event."""
    parts = [str(r) for r in evaluation.get("reasons") or []]
    return "; ".join(parts)[:1500] or "no reasons reported"
