"""Reconcile one FineTuneJob: plan, create trainer config + identity + Job, then mirror the Job's state."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from bigmodel_operator import conditions as c
from bigmodel_operator import naming
from bigmodel_operator.api import BigModelSpec, FineTuneJobSpec
from bigmodel_operator.api.bigmodel import WeightCacheSpec
from bigmodel_operator.builders.feedback_sink import sink_uri
from bigmodel_operator.builders.trainer_job import build_config_map, build_identity, build_job, render_trainer_config
from bigmodel_operator.builders.volumes import Mounts
from bigmodel_operator.conditions import Reason
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.kube import ApiError, Kube
from bigmodel_operator.reconcile.adapter_promotion import GATE_FAILED, PROMOTED, promoted_condition
from bigmodel_operator.reconcile.children import AlreadyReportedError, NotControlledError, ensure_child
from bigmodel_operator.reconcile.model_source import model_config_for, read_secret_key
from bigmodel_operator.reconcile.offload import PLAN_TIMEOUT_SECONDS, off_loop
from bigmodel_operator.reconcile.plan_glue import TrainingPlanResult, training_plan
from bigmodel_operator.reconcile.state import ClusterState
from bigmodel_operator.status.finetunejob_status import FineTuneJobObservation, compute_status

log = logging.getLogger(__name__)
EventSink = Callable[[dict[str, Any], str, str, str], None]
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


class FineTuneJobReconciler:
    """`reconcile(body)` is the one idempotent entry point."""

    def __init__(self, kube: Kube, state: ClusterState, config: OperatorConfig, emit: EventSink) -> None:
        self.kube = kube
        self.state = state
        self.config = config
        self.emit = emit

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

    async def _weight_cache(self, namespace: str, spec: FineTuneJobSpec) -> WeightCacheSpec | None:
        """The shared weight cache of the BigModel `baseModel.bigModelRef` names: the trainer reads its copy."""
        ref = spec.base_model.big_model_ref
        if ref is None:
            return None
        bm = self.state.get("BigModel", namespace, ref.name) or await self.kube.get("BigModel", namespace, ref.name)
        if bm is None:
            return None
        return BigModelSpec.model_validate(bm.get("spec") or {}).weight_cache

    async def _feedback_sink(self, namespace: str, spec: FineTuneJobSpec, obs: FineTuneJobObservation) -> str | None:
        """The feedback sink `dataset.fromFeedback` reads; a missing BigModel or sink is a blocker (retried)."""
        wanted = spec.dataset.from_feedback
        if wanted is None:
            return None
        ref = wanted.big_model
        bm = self.state.get("BigModel", namespace, ref) or await self.kube.get("BigModel", namespace, ref)
        if bm is None:
            where = "spec.dataset.fromFeedback.bigModel"
            obs.blockers.append((Reason.FEEDBACK_SOURCE_NOT_FOUND, f"BigModel {ref} ({where}) not found"))
            return None
        try:
            uri = sink_uri(ref, BigModelSpec.model_validate(bm.get("spec") or {}))
        except ValidationError:
            uri = None
        if uri is None:
            obs.blockers.append(
                (
                    Reason.FEEDBACK_NOT_ENABLED,
                    f"BigModel {ref} collects no feedback: set its spec.feedback.enabled and spec.feedback.sink",
                )
            )
        return uri

    async def reconcile(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        if meta.get("deletionTimestamp"):
            return
        previous = body.get("status") or {}
        if previous.get("phase") in {"Succeeded", "Failed"} and previous.get("observedGeneration") == meta.get(
            "generation"
        ):
            # Finished: the Job and the plan never change (the spec is immutable); only the adapter's
            # promotion into its BigModel still moves.
            await self._write_status(body, {k: previous[k] for k in _OURS if k in previous})
            return
        try:
            spec = FineTuneJobSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            obs = FineTuneJobObservation(meta.get("generation"), None, Reason.INVALID_SPEC, str(error), "", "")
            obs.blockers.append((Reason.INVALID_SPEC, str(error)))
            await self._write_status(body, compute_status(obs, previous))
            return
        obs = FineTuneJobObservation(
            meta.get("generation"), None, Reason.PLANNED, "", naming.job_name(name), spec.output.uri
        )
        rejected: ApiError | None = None
        base_uri, base_revision, inline = await self._base_model(namespace, spec)
        obs.base_model_uri = base_uri
        token = None
        creds = spec.credentials.hf_token_secret_ref if spec.credentials else None
        if creds:
            token = await read_secret_key(self.kube, namespace, creds.name, creds.key, self.config)
            if token is None:
                obs.blockers.append(
                    (Reason.GATED_MODEL_NO_TOKEN, f"Secret {creds.name} with key {creds.key} does not exist")
                )
        feedback_sink = await self._feedback_sink(namespace, spec, obs)
        if base_uri is None:
            ref = spec.base_model.big_model_ref.name if spec.base_model.big_model_ref else "?"
            obs.blockers.append((Reason.BASE_MODEL_NOT_FOUND, f"BigModel {ref} (spec.baseModel.bigModelRef) not found"))
            obs.plan_reason, obs.plan_message = Reason.BASE_MODEL_NOT_FOUND, obs.blockers[-1][1]
        else:
            source = await model_config_for(
                self.kube, namespace, base_uri, base_revision, inline, None, token, self.config
            )
            result = await self._plan(spec, source)
            obs.plan = result.plan.model_dump(by_alias=True, exclude_none=True, mode="json") if result.plan else None
            obs.plan_reason, obs.plan_message = result.reason, result.message
            if result.reason in c.BLOCKING_PLAN_REASONS:
                obs.blockers.append((result.reason, result.message))
            gpus = result.gpus
            gpu = spec.resources.gpu if spec.resources else None
            if gpus and gpu and gpu.product and gpu.product not in self.state.gpu_products():
                obs.warnings.append(
                    (Reason.NO_MATCHING_GPU_NODES, f"no node carries nvidia.com/gpu.product={gpu.product}")
                )
            if not obs.blockers:
                rejected = await self._apply(body, spec, base_uri, base_revision, gpus, obs, uid, feedback_sink)
        obs.job = obs.job or self.state.get("Job", namespace, naming.job_name(name))
        obs.pods = [
            p
            for (kind, ns, _), p in self.state.objects.items()
            if kind == "Pod"
            and ns == namespace
            and (p["metadata"].get("labels") or {}).get(naming.LABEL_FINETUNEJOB) == name
        ]
        await self._write_status(body, compute_status(obs, previous))
        if rejected is not None:
            raise AlreadyReportedError(str(rejected)) from rejected  # the runner retries with backoff

    async def _plan(self, spec: FineTuneJobSpec, source: Any) -> TrainingPlanResult:
        if source.reason == Reason.MODEL_CONFIG_OUT_OF_BOUNDS:
            fallback = spec.resources.gpu.count if spec.resources and spec.resources.gpu else None
            return TrainingPlanResult(None, source.reason, source.message, fallback or 1)
        try:
            return await off_loop(lambda: training_plan(spec, source, self.config))
        except TimeoutError:
            message = f"planning took longer than {PLAN_TIMEOUT_SECONDS:g} s and was abandoned"
            return TrainingPlanResult(None, Reason.PLANNING_TIMED_OUT, message, 1)

    async def report_failure(self, body: dict[str, Any], error: BaseException) -> None:
        """A reconcile that raised: Complete=False with reason ReconcileError and the error's text, and
        a Warning Event. Best effort: the apiserver may be what failed."""
        meta = body["metadata"]
        previous = body.get("status") or {}
        message = f"reconcile failed (retrying with backoff): {error}"[:2000]
        before = c.get_condition(previous.get("conditions"), c.COMPLETE) or {}
        conds = c.set_condition(
            previous.get("conditions"), c.COMPLETE, False, Reason.RECONCILE_ERROR, message, meta.get("generation")
        )
        try:
            await self.kube.patch_status("FineTuneJob", meta["namespace"], meta["name"], {"conditions": conds})
        except Exception as write_error:
            log.warning("could not report the failure of FineTuneJob %s: %s", meta["name"], write_error)
            return
        if (before.get("reason"), before.get("message")) != (Reason.RECONCILE_ERROR, message):
            self.emit(body, "Warning", Reason.RECONCILE_ERROR, message)

    async def _apply(
        self,
        body: dict[str, Any],
        spec: FineTuneJobSpec,
        base_uri: str,
        base_revision: str | None,
        gpus: int,
        obs: FineTuneJobObservation,
        uid: str,
        feedback_sink: str | None = None,
    ) -> ApiError | None:
        """Create the children; a write the apiserver refuses becomes a blocker and is returned."""
        mounts = Mounts(root=self.config.model_mount_root)
        trainer_config = render_trainer_config(body, spec, base_uri, base_revision, mounts, feedback_sink)
        config_map = build_config_map(body, trainer_config)
        try:
            for child in [*build_identity(body), config_map]:
                await ensure_child(self.kube, self.state, child, uid)
            cache = await self._weight_cache(body["metadata"]["namespace"], spec)
            job = build_job(body, spec, gpus, mounts, self.config, config_map, plan=obs.plan, weight_cache=cache)
            result = await ensure_child(self.kube, self.state, job, uid, create_only=True)
        except NotControlledError as error:
            obs.blockers.append((Reason.CHILD_NOT_CONTROLLED, str(error)))
            return None
        except ApiError as error:
            if error.status >= 500 or error.status == 429:
                raise
            what = error.kind_name or "a child"
            obs.blockers.append(
                (Reason.CHILD_REJECTED, f"the apiserver refused {what} (HTTP {error.status}): {error.message}")
            )
            return error
        obs.job = result.body
        if event := result.event():
            self.emit(body, "Normal", *event)
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

    def _announce_promotion(self, body: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> None:
        before = c.get_condition(old.get("conditions"), PROMOTED) or {}
        after = c.get_condition(new.get("conditions"), PROMOTED)
        if after is None or (before.get("status"), before.get("reason")) == (after["status"], after["reason"]):
            return
        if after["status"] == "True":
            self.emit(body, "Normal", PROMOTED, after["message"])
        elif after["reason"] in {GATE_FAILED, "RolledBack", "Refused", "BigModelNotFound"}:
            self.emit(body, "Warning", after["reason"], after["message"])

    async def _write_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        meta = body["metadata"]
        key = ("FineTuneJob", meta["namespace"], meta["name"])
        current = body.get("status") or {}
        status = self._with_promotion(body, status)
        before = self.state.written_status.get(key) or current
        if all(current.get(k) == status.get(k) for k in _OURS) or self.state.written_status.get(key) == status:
            return
        await self.kube.patch_status("FineTuneJob", meta["namespace"], meta["name"], status)
        self.state.written_status[key] = status
        self._announce_promotion(body, before, status)
        if current.get("phase") != status.get("phase"):
            failed = c.get_condition(status.get("conditions"), c.FAILED) or {}
            if status["phase"] == "Failed":
                self.emit(body, "Warning", failed.get("reason", "Failed"), failed.get("message", ""))
            else:
                self.emit(body, "Normal", status["phase"], f"FineTuneJob is {status['phase']}")
