"""Reconcile one BigModel: plan, check, apply the RayService and Ingress, then write honest status."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from bigmodel_operator import conditions as c
from bigmodel_operator import naming
from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.api_keys import build_api_keys_secret, generate_api_key
from bigmodel_operator.builders.engine_check import check_extra_args
from bigmodel_operator.builders.ingress import build_ingress, ingress_url
from bigmodel_operator.builders.networkpolicy import build_network_policy
from bigmodel_operator.builders.placement import Placement, placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.builders.serve_args import Promotions, api_keys_secret_name, route_prefix, scaling_args
from bigmodel_operator.builders.serving_identity import build_serving_identity
from bigmodel_operator.conditions import Reason
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.kube import ApiError, Kube, path_of
from bigmodel_operator.reconcile.adapter_promotion import bigmodel_promotions
from bigmodel_operator.reconcile.children import (
    AlreadyReportedError,
    ApplyResult,
    NotControlledError,
    ensure_child,
    remove_child,
)
from bigmodel_operator.reconcile.model_source import model_config_for, read_secret_key
from bigmodel_operator.reconcile.offload import PLAN_TIMEOUT_SECONDS, off_loop
from bigmodel_operator.reconcile.plan_glue import ServingPlanResult, serving_plan
from bigmodel_operator.reconcile.raycluster_sync import WorkerBoundsSync
from bigmodel_operator.reconcile.spec_checks import hidden_path_problems, name_problem
from bigmodel_operator.reconcile.state import ClusterState
from bigmodel_operator.status.bigmodel_status import BigModelObservation, Blocker, compute_status
from bigmodel_operator.status.engine_replicas import (
    EngineReplicas,
    engine_deployment_status,
    engine_replicas,
    scale_reason,
)

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any], str, str, str], None]  # (body, type, reason, message)


def _selector(name: str) -> str:
    return f"{naming.LABEL_BIGMODEL}={name},{naming.LABEL_COMPONENT}=model-server"


def _in_cluster_url(name: str, namespace: str, spec: BigModelSpec, config: OperatorConfig) -> str:
    """KubeRay's Serve Service on the Serve port, under the application's route prefix (the ingress path)."""
    prefix = route_prefix(spec).rstrip("/")
    return f"http://{naming.serve_service_name(name)}.{namespace}.svc.cluster.local:{config.serve_port}{prefix}/v1"


def _engine_replicas(
    name: str,
    spec: BigModelSpec,
    rayservice: dict[str, Any] | None,
    previous: dict[str, Any] | None,
    pods_per_replica: int,
    config: OperatorConfig,
) -> tuple[EngineReplicas, dict[str, Any] | None]:
    """Serve's engine replicas (desired, ready) and status.lastScaled: a new one when Serve starts a scale."""
    scaling = scaling_args(spec, config)
    bounds = (int(scaling["min_replicas"]), int(scaling["max_replicas"]))
    cluster = (((rayservice or {}).get("status") or {}).get("activeServiceStatus") or {}).get("rayClusterStatus") or {}
    ready_pods = cluster.get("readyWorkerReplicas", cluster.get("availableWorkerReplicas"))
    desired_pods = cluster.get("desiredWorkerReplicas")
    before = previous or {}
    known = before.get("replicas")
    serve_reports = bool(engine_deployment_status(rayservice, name)[0])
    if desired_pods is not None and (known is None or not serve_reports):  # the Ray autoscaler's pods
        known = int(desired_pods) // max(1, pods_per_replica)
    engines = engine_replicas(
        rayservice,
        name,
        bounds=bounds,
        fixed=spec.scaling.replicas if spec.scaling and spec.scaling.replicas is not None else None,
        previous_desired=int(known) if known is not None else None,
        ready_pods=int(ready_pods) if ready_pods is not None else None,
        pods_per_replica=pods_per_replica,
    )
    last = before.get("lastScaled")
    if engines.scaling and (not last or (last.get("from"), last.get("to")) != engines.scaling):
        reason = scale_reason(engines.scaling, bounds, float(scaling["target_ongoing_requests"]))
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        last = {"from": engines.scaling[0], "to": engines.scaling[1], "reason": reason, "time": now}
    return engines, last


class BigModelReconciler:
    """Holds the collaborators; `reconcile(body)` is the one idempotent entry point."""

    def __init__(self, kube: Kube, state: ClusterState, config: OperatorConfig, emit: EventSink) -> None:
        self.kube = kube
        self.state = state
        self.config = config
        self.emit = emit
        self.keys_created: set[str] = set()  # BigModel uids whose generated API-keys Secret exists
        self.adapter_phases: dict[str, dict[str, str]] = {}  # BigModel uid -> engine adapter name -> phase
        self.worker_bounds = WorkerBoundsSync(kube, emit)  # KubeRay does not carry bound edits to the cluster

    async def reconcile(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return  # children go with the owner through garbage collection
        try:
            spec = BigModelSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            obs = BigModelObservation(meta.get("generation"), 0, None, Reason.INVALID_SPEC, str(error))
            obs.blockers.append(Blocker(Reason.INVALID_SPEC, f"spec does not parse: {error}"))
            status = compute_status(obs, self._previous_status(body))
            status["adapters"] = self._previous_adapters(body) or None  # promotion state survives a bad edit
            await self._write_status(body, status)
            return
        obs, place = await self._observe(body, spec)
        promoted = bigmodel_promotions(self.state, body, self._previous_adapters(body))
        rejected: ApiError | None = None
        if not any(b.blocks_deploy for b in obs.blockers):
            rejected = await self._apply_children(body, spec, place, obs, promoted.promotions)
        status = compute_status(obs, self._previous_status(body))
        if rejected is None and not any(b.blocks_deploy for b in obs.blockers):
            status["adapters"] = promoted.adapters or None  # None clears what the last FineTuneJob left
            await self._write_status(body, status)
            self._announce_adapters(body, promoted.adapters, promoted.notes, promoted.unmounted)
        else:  # nothing was rendered: the versions keep the phases they had (no Promoted=True on paper)
            status["adapters"] = self._previous_adapters(body) or None
            await self._write_status(body, status)
        if rejected is not None:
            raise AlreadyReportedError(str(rejected)) from rejected  # the runner retries with backoff

    async def report_failure(self, body: dict[str, Any], error: BaseException) -> None:
        """A reconcile that raised: Ready=False with reason ReconcileError and the error's text, and a
        Warning Event (through the transition). Best effort: the apiserver may be what failed."""
        meta = body["metadata"]
        previous = dict(self._previous_status(body) or {})
        message = f"reconcile failed (retrying with backoff): {error}"[:2000]
        conds = c.set_condition(
            previous.get("conditions"), c.READY, False, Reason.RECONCILE_ERROR, message, meta.get("generation")
        )
        try:
            await self._write_status(body, {**previous, "conditions": conds})
        except Exception as write_error:
            log.warning("could not report the failure of BigModel %s: %s", meta["name"], write_error)

    async def _observe(self, body: dict[str, Any], spec: BigModelSpec) -> tuple[BigModelObservation, Placement]:
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        blockers: list[Blocker] = []
        warnings: list[Blocker] = []
        if problem := name_problem(name):  # objects admitted before the CRD's name rule
            blockers.append(Blocker(Reason.INVALID_SPEC, problem))
        blockers += [Blocker(Reason.INVALID_SPEC, problem) for problem in hidden_path_problems(spec)]
        for problem in check_extra_args(spec.engine.extra_args if spec.engine else None):
            blockers.append(Blocker(Reason.INVALID_ENGINE_ARGS, f"spec.engine.{problem}"))
        token = None
        creds = spec.credentials.hf_token_secret_ref if spec.credentials else None
        if creds:
            token = await read_secret_key(self.kube, namespace, creds.name, creds.key, self.config)
            if token is None:
                blockers.append(
                    Blocker(
                        Reason.GATED_MODEL_NO_TOKEN,
                        f"Secret {creds.name} with key {creds.key} (spec.credentials.hfTokenSecretRef) "
                        f"does not exist in namespace {namespace}: create it, the model cannot be pulled without it",
                    )
                )
        cm_ref = spec.model.config_map_ref
        source = await model_config_for(
            self.kube,
            namespace,
            spec.model.uri,
            spec.model.revision,
            spec.model.config,
            (cm_ref.name, cm_ref.key) if cm_ref else None,
            token,
            self.config,
        )
        if source.reason == Reason.GATED_MODEL_NO_TOKEN:
            blockers.append(Blocker(Reason.GATED_MODEL_NO_TOKEN, source.message))
        if source.reason == Reason.MODEL_CONFIG_OUT_OF_BOUNDS:
            plan_result = ServingPlanResult(None, source.reason, source.message)
        else:
            try:
                plan_result = await off_loop(lambda: serving_plan(spec, source, self.config))
            except TimeoutError:
                message = f"planning took longer than {PLAN_TIMEOUT_SECONDS:g} s and was abandoned"
                plan_result = ServingPlanResult(None, Reason.PLANNING_TIMED_OUT, message)
        if plan_result.reason in c.BLOCKING_PLAN_REASONS:
            blockers.append(Blocker(plan_result.reason, plan_result.message))
        place = placement(spec, plan_result.plan, source.config)  # config.json also names the tool parser
        gpu = spec.resources.gpu if spec.resources else None
        if place.gpus_per_replica and gpu and gpu.product and gpu.product not in self.state.gpu_products():
            warnings.append(
                Blocker(
                    Reason.NO_MATCHING_GPU_NODES,
                    f"no node carries nvidia.com/gpu.product={gpu.product}; the model's pods stay Pending until "
                    "one joins (e.g. through a node autoscaler)",
                    blocks_deploy=False,
                )
            )
        rayservice = self.state.get("RayService", namespace, naming.rayservice_name(name))
        ingress = self.state.get("Ingress", namespace, naming.ingress_name(name))
        url = ingress_url(spec) or _in_cluster_url(name, namespace, spec, self.config)
        engines, last_scaled = _engine_replicas(
            name, spec, rayservice, self._previous_status(body), place.pods_per_replica, self.config
        )
        obs = BigModelObservation(
            generation=meta.get("generation"),
            desired_replicas=engines.desired,
            ready_engines=engines.ready if engines.state else None,
            last_scaled=last_scaled,
            plan=plan_result.plan.model_dump(by_alias=True, exclude_none=True, mode="json")
            if plan_result.plan
            else None,
            plan_reason=plan_result.reason,
            plan_message=plan_result.message,
            blockers=blockers,
            warnings=warnings,
            rayservice=rayservice,
            ingress_requested=bool(spec.expose and spec.expose.ingress),
            ingress=ingress,
            url=url,
            selector=_selector(name),
            rayservice_name=naming.rayservice_name(name),
        )
        return obs, place

    async def _apply_children(
        self,
        body: dict[str, Any],
        spec: BigModelSpec,
        place: Placement,
        obs: BigModelObservation,
        promotions: Promotions,
    ) -> ApiError | None:
        """Apply the children; a write the apiserver refuses becomes a blocker (and is returned, so
        the reconcile fails after writing status and the runner retries with backoff)."""
        meta = body["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        try:
            # The policy first, so the Ray pods never run with their ports open.
            await self._ensure_optional(
                body,
                "NetworkPolicy",
                naming.network_policy_name(name),
                uid,
                build_network_policy(body, spec, self.config),
            )
            if (keys := api_keys_secret_name(name, spec)) and not (spec.auth and spec.auth.secret_name):
                await self._create_api_keys(body, keys)
            for child in build_serving_identity(body):  # before the pods that run as it
                await ensure_child(self.kube, self.state, child, uid)
            rayservice = build_rayservice(body, spec, place, self.config, promotions)
            result = await ensure_child(self.kube, self.state, rayservice, uid)
            obs.rayservice = result.body
            self._announce(body, result)
            await self.worker_bounds.sync(body, rayservice, result.body)  # never raises
            desired_ingress = build_ingress(body, spec, self.config)
            if desired_ingress is not None:
                ing = await ensure_child(self.kube, self.state, desired_ingress, uid)
                obs.ingress = ing.body
                self._announce(body, ing)
            elif self.state.get("Ingress", namespace, naming.ingress_name(name)) and await remove_child(
                self.kube, self.state, "Ingress", namespace, naming.ingress_name(name), uid
            ):
                obs.ingress = None
                self.emit(body, "Normal", "IngressDeleted", f"Deleted Ingress {naming.ingress_name(name)}")
        except NotControlledError as error:
            obs.blockers.append(Blocker(Reason.CHILD_NOT_CONTROLLED, str(error)))
        except ApiError as error:
            if error.status >= 500 or error.status == 429:
                raise  # the apiserver is unwell, not our spec: retry (the runner reports it)
            what = error.kind_name or "a child"
            obs.blockers.append(
                Blocker(Reason.CHILD_REJECTED, f"the apiserver refused {what} (HTTP {error.status}): {error.message}")
            )
            return error
        return None

    async def _ensure_optional(
        self, body: dict[str, Any], kind: str, child: str, uid: str, desired: dict[str, Any] | None
    ) -> None:
        """Apply a child the spec may turn off; delete it (if ours) once it is turned off."""
        namespace = body["metadata"]["namespace"]
        if desired is not None:
            self._announce(body, await ensure_child(self.kube, self.state, desired, uid))
        elif self.state.get(kind, namespace, child) and await remove_child(
            self.kube, self.state, kind, namespace, child, uid
        ):
            self.emit(body, "Normal", f"{kind}Deleted", f"Deleted {kind} {child}")

    async def _create_api_keys(self, body: dict[str, Any], secret_name: str) -> None:
        """Auth is on by default: create the generated keys Secret once (a POST: RBAC `create` only, no
        `get`); 409 means it exists, and then it is the user's to edit (rotation) and never overwritten."""
        uid = body["metadata"]["uid"]
        if uid in self.keys_created:
            return
        secret = build_api_keys_secret(body, secret_name, generate_api_key())
        try:
            await self.kube.request("POST", path_of("Secret", body["metadata"]["namespace"]), body=secret)
            self.emit(body, "Normal", "SecretCreated", f"Created Secret {secret_name} with a generated API key")
        except ApiError as error:
            if error.status != 409:
                error.kind_name = f"Secret {secret_name}"
                raise
        self.keys_created.add(uid)

    def _announce(self, body: dict[str, Any], result: ApplyResult) -> None:
        if event := result.event():
            self.emit(body, "Normal", *event)

    def _previous_adapters(self, body: dict[str, Any]) -> list[dict[str, Any]] | None:
        """status.adapters as we last wrote them: only the operator writes them, so what it wrote
        last is newest, even when the watch has not delivered it or the spec moved on since."""
        meta = body["metadata"]
        written = self.state.written_status.get(("BigModel", meta["namespace"], meta["name"]))
        if written is not None:
            adapters: list[dict[str, Any]] | None = written.get("adapters")
            return adapters
        return (body.get("status") or {}).get("adapters")

    def _announce_adapters(
        self, body: dict[str, Any], adapters: list[dict[str, Any]], notes: list[str], unmounted: list[str] | None = None
    ) -> None:
        """An Event for each adapter version that changed phase, and once for each override that cannot act
        and each adapter output on a claim the spec does not mount."""
        uid = body["metadata"]["uid"]
        seen = self.adapter_phases.setdefault(uid, {})
        first = not seen
        if first:  # after a restart: what the status said is what was already announced
            for entry in (body.get("status") or {}).get("adapters") or []:
                seen[entry.get("engineName", "")] = entry.get("phase", "")
        for entry in adapters:
            name, phase = entry.get("engineName", ""), entry.get("phase", "")
            if seen.get(name) != phase:
                seen[name] = phase
                kind = "Warning" if phase in {"RolledBack", "Refused"} else "Normal"
                self.emit(body, kind, f"Adapter{phase}", f"{name}: {entry.get('message', phase)}")
        for reason, texts in (("RolloutIgnored", notes), ("AdapterClaimNotMounted", unmounted or [])):
            for note in texts:
                if note not in seen:
                    seen[note] = "noted"
                    self.emit(body, "Warning", reason, note)

    def _previous_status(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The status we last wrote (the watch may not have delivered it yet), else the body's."""
        meta = body["metadata"]
        written = self.state.written_status.get(("BigModel", meta["namespace"], meta["name"]))
        current: dict[str, Any] | None = body.get("status")
        if written and written.get("observedGeneration") == meta.get("generation"):
            return written
        return current

    async def _write_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        meta = body["metadata"]
        key = ("BigModel", meta["namespace"], meta["name"])
        current = body.get("status") or {}
        written = self.state.written_status.get(key)
        if _same(current, status) or (written is not None and _same(written, status)):
            return
        await self.kube.patch_status("BigModel", meta["namespace"], meta["name"], _with_removals(current, status))
        self.state.written_status[key] = status
        self._emit_transitions(body, written or current, status)

    def _emit_transitions(self, body: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> None:
        scaled = new.get("lastScaled")
        if scaled and scaled != old.get("lastScaled"):
            up = scaled["to"] > scaled["from"]
            verb = "adding" if up else "removing"
            self.emit(
                body,
                "Normal",
                "ScaledUp" if up else "ScaledDown",
                f"Serve is {verb} engine replicas: {scaled['from']} -> {scaled['to']} ({scaled['reason']})",
            )
        before = c.get_condition(old.get("conditions"), c.READY) or {}
        after = c.get_condition(new.get("conditions"), c.READY) or {}
        if (before.get("status"), before.get("reason")) == (after.get("status"), after.get("reason")):
            return
        if after.get("reason") in _PROGRESS_REASONS:
            return  # normal progress is in the conditions; an Event each would double the writes
        kind = "Normal" if after.get("status") == "True" else "Warning"
        self.emit(body, kind, after.get("reason", ""), after.get("message", ""))


_PROGRESS_REASONS = {Reason.RAYSERVICE_DEPLOYING, Reason.NO_SERVE_ENDPOINTS, Reason.INGRESS_PENDING}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == v for k, v in b.items())


def _with_removals(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that also clears status fields we no longer report (e.g. a plan that went away)."""
    patch = dict(desired)
    for key in ("plan", "url", "selector", "rayService"):
        if key in current and key not in desired:
            patch[key] = None
    return patch
