"""FineTuneJob deployTo → adapter versions and canary routes: the pure state machine and its rendering."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

import yaml

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.reconcile.adapter_promotion import bigmodel_promotions, promoted_condition
from bigmodel_operator.reconcile.state import ClusterState
from bigmodel_operator.status.adapter_versions import job_of, plan_promotions
from bigmodel_serving.args import parse_application

from .conftest import assert_golden, load_example

T0, T1, T2, T3 = "2026-11-30T05:00:00Z", "2026-11-30T06:00:00Z", "2026-11-30T07:00:00Z", "2026-11-30T08:00:00Z"


def _ftj(
    name: str,
    completed: str = T1,
    passed: bool | None = True,
    phase: str = "Succeeded",
    adapter: str = "support-bot",
    **canary: Any,
) -> dict[str, Any]:
    deploy: dict[str, Any] = {"bigModel": "tiny-cpu", "adapterName": adapter}
    if canary:
        deploy["canary"] = canary
    status: dict[str, Any] = {"phase": phase, "adapterUri": f"pvc://adapters/{name}"}
    if phase == "Succeeded":
        status["completionTime"] = completed
    if passed is not None:
        status["evaluation"] = {"passed": passed, "reasons": [f"held-out loss ratio {'0.5' if passed else '1.4'}"]}
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"output": {"uri": f"pvc://adapters/{name}"}, "method": {"rank": 8}, "deployTo": deploy},
        "status": status,
    }


def _plan(ftjs: list[dict[str, Any]], previous: list[dict[str, Any]] | None = None, **spec: Any) -> Any:
    return plan_promotions([job_of(f) for f in ftjs], spec, previous, T3)


def _phases(result: Any) -> dict[str, tuple[str, Any]]:
    return {e["version"]: (e["phase"], e.get("weight")) for e in result.adapters}


def _route(result: Any) -> dict[str, Any]:
    (route,) = result.promotions.routes
    rendered: dict[str, Any] = route.render()
    return rendered


def _settle(ftjs: list[dict[str, Any]], **spec: Any) -> Any:
    """Plan twice, the second time from the first's status: the result must not move (no churn)."""
    first = _plan(ftjs, **spec)
    second = _plan(ftjs, first.adapters, **spec)
    assert second.adapters == first.adapters and second.promotions == first.promotions
    return second


def test_first_version_becomes_stable_and_a_later_one_is_a_weighted_candidate() -> None:
    first = _settle([_ftj("ftj-1")])
    assert _phases(first) == {"ftj-1": ("Stable", 1.0)}
    assert _route(first) == {
        "name": "support-bot",
        "stable": "support-bot.ftj-1",
        "candidate": None,
        "weight": 0.0,
        "mode": "auto",
        "split": "key",
    }
    second = _plan([_ftj("ftj-1"), _ftj("ftj-2", T2, maxErrorRateIncrease=0.05)], first.adapters)
    assert _phases(second) == {"ftj-1": ("Stable", 0.8), "ftj-2": ("Candidate", 0.2)}
    assert _route(second)["candidate"] == "support-bot.ftj-2" and _route(second)["max_error_rate_increase"] == 0.05
    assert _route(second)["started_at"] == datetime.fromisoformat(T3).timestamp()  # becomes a candidate now
    later = _plan([_ftj("ftj-1"), _ftj("ftj-2", T2, maxErrorRateIncrease=0.05)], second.adapters, auth={"mode": "none"})
    assert _route(later)["started_at"] == _route(second)["started_at"]  # from status: a restart keeps the deadline
    assert _route(later)["split"] == "request"  # no API keys: every request is drawn
    assert second.adapters[0]["since"] == first.adapters[0]["since"] == T3  # unchanged phase keeps its time


def test_gate_failed_running_and_unreported_jobs_are_not_served() -> None:
    result = _settle([_ftj("bad", passed=False), _ftj("busy", phase="Running"), _ftj("quiet", passed=None)])
    assert result.promotions.routes == ()
    assert _phases(result) == {"bad": ("Refused", None)}
    assert "eval gate failed: held-out loss ratio 1.4" in result.adapters[0]["message"]
    # Every targeting job's output is mounted and sizes the LoRA slots from the start.
    assert result.promotions.mount_uris == ("pvc://adapters/bad", "pvc://adapters/busy", "pvc://adapters/quiet")
    assert (result.promotions.lora_rank, result.promotions.adapter_names) == (8, 1)


def test_canary_weight_100_skips_the_canary_and_retires_the_old_stable() -> None:
    first = _settle([_ftj("ftj-1")])
    result = _plan([_ftj("ftj-1"), _ftj("ftj-2", T2, weight=100)], first.adapters)
    assert _phases(result) == {"ftj-1": ("Retired", None), "ftj-2": ("Stable", 1.0)}


def test_rollback_promote_and_pin_overrides() -> None:
    jobs = [_ftj("ftj-1"), _ftj("ftj-2", T2)]
    canary = _plan(jobs, _settle([_ftj("ftj-1")]).adapters)

    rollback = [{"adapter": "support-bot", "action": "rollback"}]
    rolled = _plan(jobs, canary.adapters, rollouts=rollback)
    assert _phases(rolled) == {"ftj-1": ("Stable", 1.0), "ftj-2": ("RolledBack", None)}
    assert _route(rolled)["mode"] == "rollback" and _route(rolled)["candidate"] is None
    # Removing the override does not bring a rolled-back version back.
    assert _phases(_plan(jobs, rolled.adapters)) == _phases(rolled)

    promote = [{"adapter": "support-bot", "action": "promote"}]
    promoted = _plan(jobs, canary.adapters, rollouts=promote)
    assert _phases(promoted) == {"ftj-1": ("Retired", None), "ftj-2": ("Stable", 1.0)}
    assert _route(promoted) | {"stable": "support-bot.ftj-2", "mode": "promote"} == _route(promoted)
    assert _phases(_plan(jobs, promoted.adapters, rollouts=promote)) == _phases(promoted)

    pin = [{"adapter": "support-bot", "action": "pin", "version": "ftj-1"}]
    pinned = _plan([*jobs, _ftj("ftj-3", T3)], promoted.adapters, rollouts=pin)
    assert _phases(pinned) == {"ftj-1": ("Stable", 1.0), "ftj-2": ("Waiting", None), "ftj-3": ("Waiting", None)}
    assert _route(pinned)["mode"] == "pin"
    # Unpinned: the pinned version stays stable and the waiting one becomes the candidate.
    unpinned = _plan([*jobs, _ftj("ftj-3", T3)], pinned.adapters)
    assert _phases(unpinned)["ftj-3"] == ("Candidate", 0.2) and _phases(unpinned)["ftj-2"][0] == "Retired"

    unknown = _plan(jobs, canary.adapters, rollouts=[{"adapter": "support-bot", "action": "pin", "version": "nope"}])
    assert unknown.notes and "nope is not a servable version" in unknown.notes[0]
    assert _route(unknown)["mode"] == "auto"


def test_rolling_back_the_stable_falls_back_to_the_previous_version() -> None:
    jobs = [_ftj("ftj-1"), _ftj("ftj-2", T2)]
    promoted = _plan(jobs, None, rollouts=[{"adapter": "support-bot", "action": "promote", "version": "ftj-2"}])
    back = _plan(
        jobs, promoted.adapters, rollouts=[{"adapter": "support-bot", "action": "rollback", "version": "ftj-2"}]
    )
    assert _phases(back)["ftj-2"] == ("RolledBack", None)
    assert _route(back)["stable"] is None or _route(back)["stable"] == "support-bot.ftj-1"


def test_a_name_taken_by_a_hand_written_adapter_is_refused() -> None:
    result = _plan([_ftj("ftj-1")], adapters=[{"name": "support-bot", "uri": "file:///a"}])
    assert _phases(result) == {"ftj-1": ("Refused", None)}
    assert "spec.adapters already has an adapter named support-bot" in result.adapters[0]["message"]


def _render(ftjs: list[dict[str, Any]], previous: list[dict[str, Any]] | None = None, **extra: Any) -> tuple[dict, Any]:
    body = load_example("bigmodel-tiny-cpu.yaml")
    body["metadata"]["namespace"] = "ns"
    body["spec"].update(extra)
    spec = BigModelSpec.model_validate(body["spec"])
    result = _plan(ftjs, previous)
    return build_rayservice(body, spec, placement(spec, None), OperatorConfig(), result.promotions), result


def _app(rayservice: dict[str, Any]) -> dict[str, Any]:
    app: dict[str, Any] = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]
    return app


def test_rendering_golden_and_contract() -> None:
    first = _settle([_ftj("ftj-1")])
    rayservice, _ = _render([_ftj("ftj-1"), _ftj("ftj-2", T2, maxErrorRateIncrease=0.05)], first.adapters)
    assert_golden("bigmodel-tiny-cpu.promoted.rayservice.yaml", rayservice)
    parsed = parse_application(_app(rayservice))
    assert [a.name for a in parsed.engine_config().adapters] == ["support-bot.ftj-1", "support-bot.ftj-2"]
    assert parsed.engine_config().adapters[0].local_path == "/mnt/bigmodel/pvc/adapters/ftj-1"
    (route,) = parsed.ingress_config().routes
    assert (route.stable, route.candidate, route.weight, route.max_error_rate_increase) == (
        "support-bot.ftj-1",
        "support-bot.ftj-2",
        0.2,
        0.05,
    )


def test_promotion_changes_only_user_config_and_renders_the_same_every_time() -> None:
    """A promotion must not reload engines (args) nor restart pods (rayClusterConfig)."""
    training, _ = _render([_ftj("ftj-1", phase="Running")])
    served, result = _render([_ftj("ftj-1")])
    again, _ = _render([_ftj("ftj-1")], result.adapters)
    assert again == served, "same inputs must render the same RayService (no update loop)"
    assert served["spec"]["rayClusterConfig"] == training["spec"]["rayClusterConfig"]
    before, after = _app(training), _app(served)
    assert after["args"] == before["args"]
    assert before["args"]["lora"]["max_lora_rank"] >= 8
    mounts = served["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"]
    assert {"name": "pvc-adapters", "persistentVolumeClaim": {"claimName": "adapters", "readOnly": True}} in mounts
    assert [d["user_config"] for d in before["deployments"]] != [d["user_config"] for d in after["deployments"]]


def test_promoted_condition_of_the_finetunejob() -> None:
    bigmodel = {"status": {"adapters": [{"version": "ftj-1", "phase": "Candidate", "engineName": "support-bot.ftj-1"}]}}
    assert promoted_condition(_ftj("ftj-1", phase="Running"), bigmodel) is None
    assert promoted_condition(_ftj("ftj-1", passed=None), bigmodel)[:2] == (False, "EvaluationPending")  # type: ignore[index]
    failed = promoted_condition(_ftj("ftj-1", passed=False), bigmodel)
    assert failed is not None and failed[:2] == (False, "GateFailed") and "loss ratio 1.4" in failed[2]
    assert promoted_condition(_ftj("ftj-1"), None)[:2] == (False, "BigModelNotFound")  # type: ignore[index]
    assert promoted_condition(_ftj("ftj-1"), bigmodel)[:2] == (True, "Canary")  # type: ignore[index]
    gone = copy.deepcopy(bigmodel)
    gone["status"]["adapters"][0]["phase"] = "RolledBack"
    assert promoted_condition(_ftj("ftj-1"), gone)[:2] == (False, "RolledBack")  # type: ignore[index]
    assert promoted_condition(_ftj("ftj-9"), bigmodel)[:2] == (False, "PromotionPending")  # type: ignore[index]


def test_evaluation_spec_reaches_the_trainer_config() -> None:
    from bigmodel_operator.api import FineTuneJobSpec
    from bigmodel_operator.builders.trainer_job import render_trainer_config
    from bigmodel_operator.builders.volumes import Mounts
    from bigmodel_training.config import TrainerConfig

    body = load_example("finetunejob-lora.yaml")
    body["metadata"]["namespace"] = "ns"
    body["spec"]["evaluation"] = {
        "datasetUri": "pvc://evals/support.jsonl",
        "scorer": "regex",
        "pattern": "^[A-Z]",
        "maxNewTokens": 32,
        "gate": {"maxLossRatio": 0.95, "minScore": 0.6},
    }
    spec = FineTuneJobSpec.model_validate(body["spec"])
    config = TrainerConfig.model_validate(render_trainer_config(body, spec, "hf://org/base", None, Mounts("/mnt/bm")))
    evaluation = config.evaluation
    assert (evaluation.scorer, evaluation.pattern, evaluation.max_new_tokens) == ("regex", "^[A-Z]", 32)
    assert evaluation.dataset_local_path == "/mnt/bm/pvc/evals/support.jsonl"
    assert (evaluation.gate.max_loss_ratio, evaluation.gate.min_score) == (0.95, 0.6)
    default = FineTuneJobSpec.model_validate({**body["spec"], "evaluation": None})
    rendered = render_trainer_config(body, default, "hf://org/base", None, Mounts("/mnt/bm"))
    assert "evaluation" not in rendered  # the trainer's defaults: held-out loss no worse than the base's


def test_an_s3_output_is_served_from_object_storage_without_a_mount() -> None:
    ftj = _ftj("ftj-s3")
    ftj["status"]["adapterUri"] = ftj["spec"]["output"]["uri"] = "s3://adapters/support-bot/ftj-s3"
    rayservice, _ = _render([ftj])
    parsed = parse_application(_app(rayservice))
    (adapter,) = parsed.engine_config().adapters
    assert (adapter.name, adapter.uri, adapter.local_path) == ("support-bot.ftj-s3", ftj["status"]["adapterUri"], None)
    volumes = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"]
    assert not [v for v in volumes if "persistentVolumeClaim" in v]


def test_adapter_claims_are_mounted_from_the_start_so_a_deploying_job_changes_no_pod() -> None:
    """KubeRay replaces the whole Ray cluster on a pod-template change: with the output claim declared in
    spec.adapterClaims, neither a job targeting the BigModel nor its promotion touches rayClusterConfig."""
    alone, _ = _render([], adapterClaims=["adapters"])
    training, _ = _render([_ftj("ftj-1", phase="Running")], adapterClaims=["adapters"])
    served, _ = _render([_ftj("ftj-1")], adapterClaims=["adapters"])
    assert (
        alone["spec"]["rayClusterConfig"] == training["spec"]["rayClusterConfig"] == served["spec"]["rayClusterConfig"]
    )
    assert _app(alone)["args"] == _app(training)["args"] == _app(served)["args"], "LoRA slots from the start"
    volumes = alone["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"]
    assert {"name": "pvc-adapters", "persistentVolumeClaim": {"claimName": "adapters", "readOnly": True}} in volumes
    without, _ = _render([])
    assert without["spec"]["rayClusterConfig"] != training["spec"]["rayClusterConfig"]  # what the field avoids


def _state_with(bigmodel_spec: dict[str, Any], *ftjs: dict[str, Any]) -> tuple[ClusterState, dict[str, Any]]:
    state = ClusterState()
    body = {"kind": "BigModel", "metadata": {"name": "tiny-cpu", "namespace": "ns", "uid": "u"}, "spec": bigmodel_spec}
    state.put(body)
    for ftj in ftjs:
        state.put({"kind": "FineTuneJob", **ftj})
    return state, body


def test_a_deploying_job_on_a_claim_the_spec_does_not_mount_is_announced() -> None:
    s3 = _ftj("ftj-s3")
    s3["status"]["adapterUri"] = s3["spec"]["output"]["uri"] = "s3://adapters/ftj-s3"
    model = {"model": {"uri": "pvc://models/tiny"}}
    state, body = _state_with(model, _ftj("ftj-1", phase="Running"), s3)
    (note,) = bigmodel_promotions(state, body, None).unmounted
    assert "FineTuneJob ftj-1" in note and "claim adapters" in note and "spec.adapterClaims" in note
    for spec in ({**model, "adapterClaims": ["adapters"]}, {"model": {"uri": "pvc://adapters/base"}}):
        state, body = _state_with(spec, _ftj("ftj-1", phase="Running"), s3)
        assert bigmodel_promotions(state, body, None).unmounted == []


def test_adapter_claims_must_be_claim_names() -> None:
    import pytest
    from pydantic import ValidationError

    base = load_example("bigmodel-tiny-cpu.yaml")["spec"]
    assert BigModelSpec.model_validate({**base, "adapterClaims": ["adapters", "team.a"]}).adapter_claims
    for bad in (["Adapters"], ["a/b"], ["x" * 254], ["c"] * 17):
        with pytest.raises(ValidationError):
            BigModelSpec.model_validate({**base, "adapterClaims": bad})


def test_a_promoted_adapter_outlives_its_finetunejob_until_it_is_rolled_back_by_hand() -> None:
    first = _settle([_ftj("ftj-1")])
    gone = _plan([], first.adapters)  # the FineTuneJob was deleted
    assert _phases(gone) == {"ftj-1": ("Stable", 1.0)}
    assert _route(gone)["stable"] == "support-bot.ftj-1"
    assert gone.promotions.mount_uris == ("pvc://adapters/ftj-1",) and gone.promotions.lora_rank == 8
    assert "its FineTuneJob is gone" in gone.adapters[0]["message"]
    again = _plan([], gone.adapters)
    assert again.adapters == gone.adapters and again.promotions == gone.promotions  # no churn
    # A new version is canaried against it as usual.
    newer = _plan([_ftj("ftj-2", T2)], gone.adapters)
    assert _phases(newer) == {"ftj-1": ("Stable", 0.8), "ftj-2": ("Candidate", 0.2)}
    # Removal is explicit: a rollback naming the version.
    rollback = [{"adapter": "support-bot", "action": "rollback", "version": "ftj-1"}]
    removed = _plan([], gone.adapters, rollouts=rollback)
    assert _phases(removed) == {"ftj-1": ("RolledBack", None)} and removed.promotions.routes == ()
    assert _plan([], removed.adapters, rollouts=rollback).adapters == []


def test_no_held_out_data_is_not_promoted_and_says_why() -> None:
    ftj = _ftj("ftj-1", passed=False)
    ftj["status"]["evaluation"] = {"passed": False, "outcome": "NotCompared", "reasons": ["no held-out data: ..."]}
    result = _plan([ftj])
    assert _phases(result) == {"ftj-1": ("Refused", None)} and result.promotions.routes == ()
    assert result.adapters[0]["message"].startswith("not promoted: no held-out data")
    promoted, reason, message = promoted_condition(ftj, {"status": {}}) or (None, None, None)
    assert (promoted, reason) == (False, "NoHeldOutData") and "no held-out data" in str(message)


def test_a_feedback_dataset_is_a_snapshot_that_ends_when_the_job_was_created() -> None:
    from bigmodel_operator.api.finetunejob import DatasetSpec
    from bigmodel_operator.builders.feedback_sink import dataset_source

    spec = DatasetSpec.model_validate({"fromFeedback": {"bigModel": "tiny-cpu", "minRating": 4}})
    rendered = dataset_source(spec, "pvc://feedback/tiny-cpu", "2026-12-06T10:00:00Z")
    assert rendered["feedback"] == {"min_rating": 4, "until": "2026-12-06T10:00:00Z"}
