"""Reconcile one FineTuneJob: plan, create trainer config + identity + Job, then mirror the Job's state.

The skeleton (status writes, failure reports, the error policy of child writes) is base_reconciler.py.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from bigmodel_operator import conditions as c
from bigmodel_operator import naming
from bigmodel_operator.api import BigModelSpec, FineTuneJobSpec
from bigmodel_operator.builders.feedback_sink import sink_uri
from bigmodel_operator.builders.trainer_job import build_config_map, build_identity, build_job, render_trainer_config
from bigmodel_operator.builders.volumes import Mounts
from bigmodel_operator.conditions import Blocker, Reason
from bigmodel_operator.reconcile.adapter_promotion import GATE_FAILED, NO_HELD_OUT_DATA, PROMOTED, promoted_condition
from bigmodel_operator.reconcile.base_reconciler import PROBLEM_REASONS, BaseReconciler, ChildWrites
from bigmodel_operator.reconcile.children import ensure_child, ensure_children
from bigmodel_operator.reconcile.model_source import model_config_for, read_secret_key
from bigmodel_operator.reconcile.offload import PLAN_TIMEOUT_SECONDS, off_loop
from bigmodel_operator.reconcile.plan_glue import TrainingPlanResult, training_plan
from bigmodel_operator.status.finetunejob_status import FineTuneJobObservation, compute_status

log = logging.getLogger(__name__)
_OURS = (
    "observedGeneration",
    "jobName",
    "baseModelUri",
    "plan",
    "phase",
    "conditions",
    "startTime",
    "completionTime",
    "adapterUri",
)


class FineTuneJobReconciler(BaseReconciler):
    """`reconcile(body)` is the one idempotent pass of a FineTuneJob."""

    kind = "FineTuneJob"
    summary = c.COMPLETE
    status_fields = _OURS  # the trainer writes the rest (progress, checkpoint, evaluation, redactions)

    async def _base_model(self, namespace: str, spec: FineTuneJobSpec) -> tuple[str | None, str | None, dict | None]:
        """(uri, revision, inline config) of the base model, following bigModelRef."""
        base = spec.base_model
        if base.uri:
            return base.uri, base.revision, base.config
        assert base.big_model_ref is not None  # CEL guarantees one of the two
        ref = base.big_model_ref.name
        bm = self.state.get("BigModel", namespace, ref) or await self.kube.get("BigModel", namespace, ref)
        if bm is None:
            return None, None, None
        bm_spec = BigModelSpec.model_validate(bm.get("spec") or {})
        return bm_spec.model.uri, bm_spec.model.revision, base.config or bm_spec.model.config

    async def _feedback_sink(self, namespace: str, spec: FineTuneJobSpec, obs: FineTuneJobObservation) -> str | None:
        """The feedback sink `dataset.fromFeedback` reads; a missing BigModel or sink is a blocker (retried)."""
        wanted = spec.dataset.from_feedback
        if wanted is None:
            return None
        ref = wanted.big_model
        bm = self.state.get("BigModel", namespace, ref) or await self.kube.get("BigModel", namespace, ref)
        if bm is None:
            where = "spec.dataset.fromFeedback.bigModel"
            obs.blockers.append(Blocker(Reason.FEEDBACK_SOURCE_NOT_FOUND, f"BigModel {ref} ({where}) not found"))
            return None
        try:
            uri = sink_uri(ref, BigModelSpec.model_validate(bm.get("spec") or {}))
        except ValidationError:
            uri = None
        if uri is None:
            obs.blockers.append(
                Blocker(
                    Reason.FEEDBACK_NOT_ENABLED,
                    f"BigModel {ref} collects no feedback: set its spec.feedback.enabled and spec.feedback.sink",
                )
            )
        return uri

    async def reconcile(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        if meta.get("deletionTimestamp"):
            return
        previous = self.previous_status(body)
        if previous.get("phase") in {"Succeeded", "Failed"} and previous.get("observedGeneration") == meta.get(
            "generation"
        ):
            # Finished: the Job and the plan never change (the spec is immutable); only the adapter's
            # promotion into its BigModel still moves.
            await self._write(body, {k: previous[k] for k in _OURS if k in previous})
            return
        try:
            spec = FineTuneJobSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            obs = FineTuneJobObservation(meta.get("generation"), None, Reason.INVALID_SPEC, str(error), "", "")
            obs.blockers.append(Blocker(Reason.INVALID_SPEC, str(error)))
            await self._write(body, compute_status(obs, previous))
            return
        obs = FineTuneJobObservation(
            meta.get("generation"), None, Reason.PLANNED, "", naming.job_name(name), spec.output.uri
        )
        outcome = ChildWrites()
        base_uri, base_revision, inline = await self._base_model(namespace, spec)
        obs.base_model_uri = base_uri
        token = None
        creds = spec.credentials.hf_token_secret_ref if spec.credentials else None
        if creds:
            token = await read_secret_key(self.kube, namespace, creds.name, creds.key, self.config)
            if token is None:
                obs.blockers.append(
                    Blocker(Reason.GATED_MODEL_NO_TOKEN, f"Secret {creds.name} with key {creds.key} does not exist")
                )
        feedback_sink = await self._feedback_sink(namespace, spec, obs)
        if base_uri is None:
            ref = spec.base_model.big_model_ref.name if spec.base_model.big_model_ref else "?"
            message = f"BigModel {ref} (spec.baseModel.bigModelRef) not found"
            obs.blockers.append(Blocker(Reason.BASE_MODEL_NOT_FOUND, message))
            obs.plan_reason, obs.plan_message = Reason.BASE_MODEL_NOT_FOUND, message
        else:
            source = await model_config_for(
                self.kube, namespace, base_uri, base_revision, inline, None, token, self.config
            )
            result = await self._plan(spec, source)
            obs.plan = result.plan.model_dump(by_alias=True, exclude_none=True, mode="json") if result.plan else None
            obs.plan_reason, obs.plan_message = result.reason, result.message
            if result.reason in c.BLOCKING_PLAN_REASONS:
                obs.blockers.append(Blocker(result.reason, result.message))
            gpu = spec.resources.gpu if spec.resources else None
            if result.gpus and gpu and gpu.product and gpu.product not in self.state.gpu_products():
                message = f"no node carries nvidia.com/gpu.product={gpu.product}"
                obs.warnings.append(Blocker(Reason.NO_MATCHING_GPU_NODES, message, blocks_deploy=False))
            if not obs.blockers:
                outcome = await self.write_children(
                    obs.blockers,
                    lambda: self._apply(body, spec, base_uri, base_revision, result.gpus, obs, feedback_sink),
                )
        job = obs.job or self.state.get("Job", namespace, naming.job_name(name))
        obs.job = job if job and naming.is_controlled_by(job, meta["uid"]) else None  # not an earlier job's
        job_uid = (obs.job or {}).get("metadata", {}).get("uid", "")
        pods = self.state.children("Pod", "FineTuneJob", namespace, name)
        obs.pods = [pod for pod in pods if job_uid and naming.is_controlled_by(pod, job_uid)]
        await self._write(body, compute_status(obs, previous))
        self.finish(outcome)

    async def _plan(self, spec: FineTuneJobSpec, source: Any) -> TrainingPlanResult:
        if source.reason == Reason.MODEL_CONFIG_OUT_OF_BOUNDS:
            fallback = spec.resources.gpu.count if spec.resources and spec.resources.gpu else None
            return TrainingPlanResult(None, source.reason, source.message, fallback or 1)
        try:
            return await off_loop(lambda: training_plan(spec, source, self.config))
        except TimeoutError:
            message = f"planning took longer than {PLAN_TIMEOUT_SECONDS:g} s and was abandoned"
            return TrainingPlanResult(None, Reason.PLANNING_TIMED_OUT, message, 1)

    async def _apply(
        self,
        body: dict[str, Any],
        spec: FineTuneJobSpec,
        base_uri: str,
        base_revision: str | None,
        gpus: int,
        obs: FineTuneJobObservation,
        feedback_sink: str | None = None,
    ) -> None:
        """Create the children in order (write_children turns what the apiserver refuses into blockers)."""
        mounts = Mounts(root=self.config.model_mount_root)
        incumbent = self._incumbent(body, spec)
        trainer_config = render_trainer_config(body, spec, base_uri, base_revision, mounts, feedback_sink, incumbent)
        config_map = build_config_map(body, trainer_config)
        await ensure_children(self.kube, self.state, [*build_identity(body), config_map], body)
        job = build_job(body, spec, gpus, mounts, self.config, config_map, plan=obs.plan)
        result = await ensure_child(self.kube, self.state, job, body, create_only=True)
        obs.job = result.body
        self.announce_child(body, result)

    def _incumbent(self, body: dict[str, Any], spec: FineTuneJobSpec) -> dict[str, str] | None:
        """{name, uri} of the stable version this job's adapter would replace (the gate compares with it);
        None: no stable adapter of that name yet, so the base model is the incumbent."""
        deploy = spec.deploy_to
        if deploy is None:
            return None
        meta = body["metadata"]
        bigmodel = self.state.get("BigModel", meta["namespace"], deploy.big_model) or {}
        adapter = deploy.adapter_name or meta["name"]
        for entry in (bigmodel.get("status") or {}).get("adapters") or []:
            mine = entry.get("name") == adapter and entry.get("version") != meta["name"]
            if mine and entry.get("phase") == "Stable" and entry.get("uri") and entry.get("engineName"):
                return {"name": str(entry["engineName"]), "uri": str(entry["uri"])}
        return None

    def _with_promotion(self, body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """`status` with the Promoted condition of a finished job that deploys to a BigModel."""
        merged = {**(body.get("status") or {}), **status}
        target = ((body.get("spec") or {}).get("deployTo") or {}).get("bigModel")
        bigmodel = self.state.get("BigModel", body["metadata"]["namespace"], target) if target else None
        verdict = promoted_condition({**body, "status": merged}, bigmodel)
        if verdict is None:
            return status
        promoted, reason, message = verdict
        conds = c.set_condition(
            status.get("conditions"), PROMOTED, promoted, reason, message, body["metadata"].get("generation")
        )
        return {**status, "conditions": conds}

    async def _write(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        await self.write_status(body, self._with_promotion(body, status))

    def announce(self, body: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> None:
        """Events: the Promoted condition's flips, each phase change, and problems with our own writes."""
        before = c.get_condition(old.get("conditions"), PROMOTED) or {}
        after = c.get_condition(new.get("conditions"), PROMOTED)
        if after is not None and (before.get("status"), before.get("reason")) != (after["status"], after["reason"]):
            if after["status"] == "True":
                self.emit(body, "Normal", PROMOTED, after["message"])
            elif after["reason"] in {GATE_FAILED, NO_HELD_OUT_DATA, "RolledBack", "Refused", "BigModelNotFound"}:
                self.emit(body, "Warning", after["reason"], after["message"])
        if old.get("phase") != new.get("phase"):
            failed = c.get_condition(new.get("conditions"), c.FAILED) or {}
            if new.get("phase") == "Failed":
                self.emit(body, "Warning", failed.get("reason", "Failed"), failed.get("message", ""))
            elif new.get("phase"):
                self.emit(body, "Normal", new["phase"], f"FineTuneJob is {new['phase']}")
        complete = c.get_condition(new.get("conditions"), c.COMPLETE) or {}
        if complete.get("reason") in PROBLEM_REASONS and new.get("phase") != "Failed":
            super().announce(body, old, new)
