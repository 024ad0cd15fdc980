"""The ingress's automatic canary decisions (status.rolloutDecisions) as the operator reads them,
and the Ray pods' Role that lets the ingress write them."""

from __future__ import annotations

from typing import Any

from bigmodel_operator.builders.serving_identity import build_serving_identity, rollout_report
from bigmodel_operator.reconcile.adapter_promotion import promoted_condition
from bigmodel_operator.status.adapter_versions import job_of, plan_promotions

T1, T2, T3, T4 = "2026-11-30T06:00:00Z", "2026-11-30T07:00:00Z", "2026-11-30T08:00:00Z", "2026-11-30T09:00:00Z"


def _ftj(name: str, completed: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "output": {"uri": f"pvc://adapters/{name}"},
            "deployTo": {"bigModel": "tiny-cpu", "adapterName": "bot"},
        },
        "status": {"phase": "Succeeded", "completionTime": completed, "evaluation": {"passed": True, "reasons": []}},
    }


JOBS = [job_of(_ftj("v1", T1)), job_of(_ftj("v2", T2))]
CANARY = [
    {"name": "bot", "version": "v1", "phase": "Stable", "since": T1},
    {"name": "bot", "version": "v2", "phase": "Candidate", "since": T2},
]


def _decision(decision: str, when: str = T3, reason: str = "candidate error rate 40.0% > stable 0.0% + 5.0%") -> Any:
    return {"bot.v2": {"route": "bot", "stable": "bot.v1", "decision": decision, "reason": reason, "time": when}}


def _plan(decisions: Any, previous: Any = CANARY, **spec: Any) -> Any:
    return plan_promotions(JOBS, spec, previous, T4, decisions)


def _phases(result: Any) -> dict[str, str]:
    return {e["version"]: e["phase"] for e in result.adapters}


def test_without_a_decision_the_canary_runs() -> None:
    result = _plan(None)
    assert _phases(result) == {"v1": "Stable", "v2": "Candidate"}
    assert result.promotions.routes[0].render()["candidate"] == "bot.v2"


def test_an_automatic_rollback_marks_the_version_and_renders_weight_zero() -> None:
    result = _plan(_decision("rollback"))
    assert _phases(result) == {"v1": "Stable", "v2": "RolledBack"}
    route = result.promotions.routes[0].render()
    assert (route["stable"], route["candidate"], route["weight"]) == ("bot.v1", None, 0.0)
    rolled = next(e for e in result.adapters if e["version"] == "v2")
    assert "error rate 40.0%" in rolled["message"] and rolled["since"] == T4
    # The next reconcile (the status now says RolledBack) keeps it so, with the numbers.
    again = _plan(_decision("rollback"), previous=result.adapters)
    assert again.adapters == result.adapters


def test_an_automatic_promote_makes_it_stable_and_retires_the_old_stable() -> None:
    result = _plan(_decision("promote", reason="200 candidate requests without regression"))
    assert _phases(result) == {"v1": "Retired", "v2": "Stable"}
    route = result.promotions.routes[0].render()
    assert (route["stable"], route["candidate"], route["weight"]) == ("bot.v2", None, 0.0)
    assert "200 candidate requests" in next(e for e in result.adapters if e["version"] == "v2")["message"]
    assert _plan(_decision("promote"), previous=result.adapters).promotions == result.promotions


def test_a_hand_override_wins_over_the_ingress() -> None:
    pinned = _plan(_decision("rollback"), rollouts=[{"adapter": "bot", "action": "promote"}])
    assert _phases(pinned) == {"v1": "Retired", "v2": "Stable"}
    held = _plan(_decision("promote"), rollouts=[{"adapter": "bot", "action": "pin", "version": "v1"}])
    assert _phases(held) == {"v1": "Stable", "v2": "Waiting"}


def test_a_decision_older_than_the_candidacy_or_about_another_phase_does_nothing() -> None:
    stale = _plan(_decision("rollback", when=T1))  # left by an earlier job of the same name
    assert _phases(stale) == {"v1": "Stable", "v2": "Candidate"}
    about_stable = {"bot.v1": {**_decision("rollback")["bot.v2"]}}
    assert _phases(_plan(about_stable)) == {"v1": "Stable", "v2": "Candidate"}
    garbage = {"bot.v2": "rollback", "bot.v9": {"decision": "explode"}}
    assert _phases(_plan(garbage)) == {"v1": "Stable", "v2": "Candidate"}


def test_an_entry_naming_a_version_leaves_newer_candidates_to_the_ingress() -> None:
    """`promote version: v2` stays in the spec (GitOps); v3 comes later: a canary the ingress judges, not a
    "promoted by hand" route that would send every key to an unjudged version."""
    promote_v2 = [{"adapter": "bot", "action": "promote", "version": "v2"}]
    jobs = [*JOBS, job_of(_ftj("v3", T3))]
    before = [
        {"name": "bot", "version": "v1", "phase": "Retired", "since": T2},
        {"name": "bot", "version": "v2", "phase": "Stable", "since": T2},
    ]
    canary = plan_promotions(jobs, {"rollouts": promote_v2}, before, T3)
    assert _phases(canary) == {"v1": "Retired", "v2": "Stable", "v3": "Candidate"}
    route = canary.promotions.routes[0].render()
    assert (route["stable"], route["candidate"], route["mode"]) == ("bot.v2", "bot.v3", "auto")
    rollback = {"bot.v3": {"route": "bot", "stable": "bot.v2", "decision": "rollback", "reason": "r", "time": T4}}
    rolled = plan_promotions(jobs, {"rollouts": promote_v2}, canary.adapters, T4, rollback)
    assert _phases(rolled) == {"v1": "Retired", "v2": "Stable", "v3": "RolledBack"}
    assert rolled.promotions.routes[0].render()["candidate"] is None
    # The ingress promoting v3 wins over the older entry (it is about v2, which it already made stable).
    promote = {"bot.v3": {**rollback["bot.v3"], "decision": "promote"}}
    promoted = plan_promotions(jobs, {"rollouts": promote_v2}, canary.adapters, T4, promote)
    assert _phases(promoted) == {"v1": "Retired", "v2": "Retired", "v3": "Stable"}
    # An entry about the candidate itself still wins over the ingress.
    keep = plan_promotions(jobs, {"rollouts": [{"adapter": "bot", "action": "promote"}]}, canary.adapters, T4, rollback)
    assert _phases(keep)["v3"] == "Stable"


def test_the_finetunejob_condition_says_rolled_back_with_the_numbers() -> None:
    result = _plan(_decision("rollback"))
    ftj = _ftj("v2", T2)
    bigmodel = {"status": {"adapters": result.adapters}}
    promoted, reason, message = promoted_condition(ftj, bigmodel) or (None, "", "")
    assert (promoted, reason) == (False, "RolledBack")
    assert "bot.v2 on BigModel tiny-cpu" in message and "error rate 40.0%" in message


def test_the_ray_pods_role_allows_patching_this_status_and_creating_events_only() -> None:
    body = {"metadata": {"name": "tiny-cpu", "namespace": "ns", "uid": "u-1"}, "kind": "BigModel"}
    account, role, binding = build_serving_identity(body)
    assert account["kind"] == "ServiceAccount" and account["metadata"]["name"] == "tiny-cpu-serving"
    assert role["rules"] == [
        {
            "apiGroups": ["bigmodel.io"],
            "resources": ["bigmodels/status"],
            "resourceNames": ["tiny-cpu"],
            "verbs": ["patch"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tiny-cpu-serving", "namespace": "ns"}]
    assert binding["roleRef"]["name"] == "tiny-cpu-serving"
    for obj in (account, role, binding):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "u-1"
        assert obj["metadata"]["annotations"]["bigmodel.io/spec-hash"]
    assert rollout_report(body) == {"namespace": "ns", "bigmodel": "tiny-cpu"}
