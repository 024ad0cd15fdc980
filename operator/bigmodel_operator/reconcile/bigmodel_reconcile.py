"""Reconcile one BigModel: plan, check, apply the RayService and Ingress, then write honest status.

The skeleton (status writes, failure reports, the error policy of child writes) is base_reconciler.py.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable
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
from bigmodel_operator.builders.serve_args import (
    Promotions,
    api_keys_secret_name,
    route_prefix,
    scales_to_zero,
    scaling_args,
    wake_timeout_seconds,
)
from bigmodel_operator.builders.serving_identity import build_serving_identity, serving_account_name
from bigmodel_operator.conditions import Blocker, Reason
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.kube import ApiError, Kube, path_of
from bigmodel_operator.reconcile.adapter_promotion import bigmodel_promotions
from bigmodel_operator.reconcile.base_reconciler import BaseReconciler, ChildWrites, EventSink
from bigmodel_operator.reconcile.children import (
    NotControlledError,
    OldChildError,
    check_cached,
    check_control,
    ensure_child,
    ensure_children,
    first_failure,
    remove_child,
)
from bigmodel_operator.reconcile.coldstart_cost import ColdStartsAndCost, ColdStartTracker
from bigmodel_operator.reconcile.model_source import (
    HUB_CACHE_SECONDS,
    model_config_for,
    pinned_revision,
    read_secret_key,
)
from bigmodel_operator.reconcile.offload import PLAN_TIMEOUT_SECONDS, off_loop
from bigmodel_operator.reconcile.plan_glue import ServingPlanResult, needs_gpu_plan, serving_plan
from bigmodel_operator.reconcile.raycluster_sync import WorkerBoundsSync
from bigmodel_operator.reconcile.spec_checks import hidden_path_problems, name_problem
from bigmodel_operator.reconcile.state import ClusterState, note_deadline, note_outside
from bigmodel_operator.status.bigmodel_status import BigModelObservation, compute_status, startup_deadline
from bigmodel_operator.status.engine_replicas import (
    EngineReplicas,
    engine_deployment_status,
    engine_replicas,
    scale_reason,
)

log = logging.getLogger(__name__)

KEYS_CONFLICT_WINDOW_SECONDS = 120.0
"""Where the operator may not read Secrets (rbac.tokenSecrets=false), a generated-keys Secret that already
exists is created again (with backoff) until the BigModel is this old: if an earlier BigModel of the same
name left it, garbage collection removes it well within that; after it, the Secret is used as it is."""
_PROGRESS_REASONS = frozenset({Reason.RAYSERVICE_DEPLOYING, Reason.NO_SERVE_ENDPOINTS, Reason.INGRESS_PENDING})


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


def _account_key(body: dict[str, Any]) -> tuple[str, str]:
    """(namespace, name) of the ServiceAccount the BigModel's Ray pods run as."""
    return body["metadata"]["namespace"], serving_account_name(body["metadata"]["name"])


def _age_seconds(body: dict[str, Any]) -> float:
    created = body["metadata"].get("creationTimestamp")
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(str(created).replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return float("inf")


class BigModelReconciler(BaseReconciler):
    """`reconcile(body)` is the one idempotent pass of a BigModel."""

    kind = "BigModel"
    summary = c.READY
    status_fields = (
        "observedGeneration",
        "conditions",
        "replicas",
        "readyReplicas",
        "plan",
        "url",
        "selector",
        "rayService",
        "adapters",
        "startup",
        "lastColdStart",
        "cost",
        "resolvedRevision",
    )
    cleared_fields = (
        "plan",
        "url",
        "selector",
        "rayService",
        "startup",
        "resolvedRevision",
    )  # e.g. a plan that went away
    progress_reasons = _PROGRESS_REASONS  # normal progress is in the conditions; an Event each would double the writes

    def __init__(self, kube: Kube, state: ClusterState, config: OperatorConfig, emit: EventSink) -> None:
        super().__init__(kube, state, config, emit)
        self.keys_created: set[str] = set()  # BigModel uids whose generated API-keys Secret exists
        self.adapter_phases: dict[str, dict[str, str]] = {}  # BigModel uid -> engine adapter name -> phase
        self.worker_bounds = WorkerBoundsSync(kube, emit)  # KubeRay does not carry bound edits to the cluster
        self.coldstarts = ColdStartTracker(state, config, emit)  # startup phases, cost, their Events

    def _engine_counts(self, obs: BigModelObservation, spec: BigModelSpec, seen: ColdStartsAndCost) -> None:
        """Scale to zero: engine replicas as the replicas report them (KubeRay counts pods, and an idle
        worker pod outlives its replica until the Ray autoscaler releases it)."""
        obs.scale_to_zero = scales_to_zero(spec)
        obs.wake_timeout_s = wake_timeout_seconds(spec)
        found = seen.startups
        # No worker pod means no engine replica (the head advertises no CPUs or GPUs for one).
        if found.reporting or found.last is not None or found.starting or not seen.workers_alive:
            obs.engine_ready = found.ready_replicas
        obs.engine_starting = found.starting
        obs.startup_phase = (found.current or {}).get("phase")

    def entries(self) -> int:
        """Per-uid memory: generated keys, adapter phases, cold starts, worker bounds (0 once every object is gone)."""
        tables = len(self.keys_created) + len(self.adapter_phases)
        return tables + self.coldstarts.entries() + self.worker_bounds.entries()

    def forget(self, body: dict[str, Any]) -> None:
        uid = body["metadata"].get("uid", "")
        self.keys_created.discard(uid)
        self.adapter_phases.pop(uid, None)
        self.coldstarts.forget(uid)

    async def reconcile(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return  # children go with the owner through garbage collection
        try:
            spec = BigModelSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            obs = BigModelObservation(meta.get("generation"), 0, None, Reason.INVALID_SPEC, str(error))
            obs.blockers.append(Blocker(Reason.INVALID_SPEC, f"spec does not parse: {error}"))
            status = compute_status(obs, self.previous_status(body))
            status["adapters"] = self._previous_adapters(body) or None  # promotion state survives a bad edit
            await self.write_status(body, status)
            return
        now = datetime.now(UTC)
        obs, place = await self._observe(body, spec)
        revision = await pinned_revision(self.kube, body, spec, self.previous_status(body), self.config)
        rendered = spec_at_revision(spec, revision)
        promoted = bigmodel_promotions(self.state, body, self._previous_adapters(body))
        outcome = ChildWrites()
        if not any(b.blocks_deploy for b in obs.blockers):
            outcome = await self.write_children(
                obs.blockers, lambda: self._apply_children(body, rendered, place, obs, promoted.promotions)
            )
        deployed = not any(b.blocks_deploy for b in obs.blockers)
        before = self.previous_status(body) or {}
        seen = self.coldstarts.observe(body, spec, place, self.previous_status(body), now)
        self._engine_counts(obs, spec, seen)
        status = compute_status(obs, before, now)
        status.update(seen.status_fields())
        if revision:
            status["resolvedRevision"] = revision
        # Nothing rendered: the versions keep the phases they had (no Promoted=True on paper). None clears what
        # the last FineTuneJob left.
        status["adapters"] = (promoted.adapters if deployed else self._previous_adapters(body)) or None
        await self.write_status(body, status)
        if prune := seen.prune_patch():  # reports of replicas whose pod is gone (the replicas' own field)
            await self.kube.patch_status("BigModel", meta["namespace"], meta["name"], prune)
        self.coldstarts.announce(body, seen, now)
        self._announce_scaling(body, before.get("lastScaled"), status.get("lastScaled"))
        if deployed:
            self._announce_adapters(body, promoted.adapters, promoted.notes, promoted.unmounted)
        if (deadline := startup_deadline(status["conditions"])) is not None:
            note_deadline(deadline)  # StartupSlow is due then, with nothing else changing
        self.finish(outcome)

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
        if spec.model.uri.startswith("hf://") and not spec.model.config and not cm_ref and self.config.fetch_hub_config:
            if source.config is None:
                note_outside()  # the Hub did not answer: try again at the next resync
            else:
                note_deadline(time.time() + HUB_CACHE_SECONDS)  # plan again when the cached config.json expires
        if source.reason == Reason.GATED_MODEL_NO_TOKEN:
            blockers.append(Blocker(Reason.GATED_MODEL_NO_TOKEN, source.message))
        if source.reason == Reason.MODEL_CONFIG_OUT_OF_BOUNDS:
            plan_result = ServingPlanResult(None, source.reason, source.message)
        elif not needs_gpu_plan(spec):  # the CPU build: nothing to plan, no thread hop (issue 21, paced latency)
            plan_result = serving_plan(spec, source, self.config)
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
        rayservice = self._own("RayService", body, naming.rayservice_name(name))
        ingress = self._own("Ingress", body, naming.ingress_name(name))
        url = ingress_url(spec) or _in_cluster_url(name, namespace, spec, self.config)
        engines, last_scaled = _engine_replicas(
            name, spec, rayservice, self.previous_status(body), place.pods_per_replica, self.config
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

    def _own(self, kind: str, body: dict[str, Any], child: str) -> dict[str, Any] | None:
        """A cached child, if this BigModel controls it (an earlier one's RayService must not report Ready)."""
        found = self.state.get(kind, body["metadata"]["namespace"], child)
        return found if found and naming.is_controlled_by(found, body["metadata"]["uid"]) else None

    async def _apply_children(
        self,
        body: dict[str, Any],
        spec: BigModelSpec,
        place: Placement,
        obs: BigModelObservation,
        promotions: Promotions,
    ) -> None:
        """Apply the children (write_children turns what the apiserver refuses into blockers). No Ray pod may start
        without its NetworkPolicy; the gate is the pods' ServiceAccount: the apiserver refuses a pod whose
        ServiceAccount does not exist (ServiceAccount admission), and the account is written only after the policy was.
        So a new BigModel (its account not there yet) writes the RayService first, alone (the paced create -> RayService
        latency of docs/benchmarks.md: no other write shares the apiserver's cores with it), then the policy; once the
        account exists, the policy goes first and the RayService after it, as a refused policy must keep pods from
        starting. Then the rest at once: account, Role and RoleBinding (after its Role: ensure_children), keys Secret,
        Ingress. The apiserver serves concurrent writes on shared cores, so a write beside the RayService's delays it;
        nothing of the RayService needs the rest first: KubeRay makes the pods well after these writes return (its own
        watch, a RayCluster, that cluster's reconcile), a pod cannot start before its keys Secret exists (the kubelet
        waits for the volume), and one that starts before its RoleBinding lacks a permission for a moment. Children of
        an earlier BigModel of this name stop everything before the first write (check_cached)."""
        name = body["metadata"]["name"]
        identity = build_serving_identity(body)
        policy = build_network_policy(body, spec, self.config)
        rayservice = build_rayservice(body, spec, place, self.config, promotions)
        ingress = build_ingress(body, spec, self.config)
        check_cached(self.state, [c for c in (policy, *identity, rayservice, ingress) if c is not None], body)
        gated = policy is not None and self.state.get("ServiceAccount", *_account_key(body)) is None
        if gated:  # no pod before the account, no account before the policy: the RayService may go first
            result = await ensure_child(self.kube, self.state, rayservice, body)
        await self._ensure_optional(body, "NetworkPolicy", naming.network_policy_name(name), policy)
        if not gated:
            result = await ensure_child(self.kube, self.state, rayservice, body)
        obs.rayservice = result.body
        self.announce_child(body, result)
        await self.worker_bounds.sync(body, rayservice, result.body)  # never raises
        rest: list[Awaitable[Any]] = [
            ensure_children(self.kube, self.state, identity, body),
            self._apply_ingress(body, ingress, obs),
        ]
        if (keys := api_keys_secret_name(name, spec)) and not (spec.auth and spec.auth.secret_name):
            rest.append(self._create_api_keys(body, keys))
        await first_failure(*rest)

    async def _apply_ingress(
        self, body: dict[str, Any], ingress: dict[str, Any] | None, obs: BigModelObservation
    ) -> None:
        """The Ingress in front of the RayService, or its removal once the spec turns it off."""
        meta = body["metadata"]
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        if ingress is not None:
            applied = await ensure_child(self.kube, self.state, ingress, body)
            obs.ingress = applied.body
            self.announce_child(body, applied)
        elif self.state.get("Ingress", namespace, naming.ingress_name(name)) and await remove_child(
            self.kube, self.state, "Ingress", namespace, naming.ingress_name(name), uid
        ):
            obs.ingress = None
            self.emit(body, "Normal", "IngressDeleted", f"Deleted Ingress {naming.ingress_name(name)}")

    async def _ensure_optional(
        self, body: dict[str, Any], kind: str, child: str, desired: dict[str, Any] | None
    ) -> None:
        """Apply a child the spec may turn off; delete it (if ours) once it is turned off."""
        meta = body["metadata"]
        if desired is not None:
            self.announce_child(body, await ensure_child(self.kube, self.state, desired, body))
        elif self.state.get(kind, meta["namespace"], child) and await remove_child(
            self.kube, self.state, kind, meta["namespace"], child, meta["uid"]
        ):
            self.emit(body, "Normal", f"{kind}Deleted", f"Deleted {kind} {child}")

    async def _create_api_keys(self, body: dict[str, Any], secret_name: str) -> None:
        """Auth is on by default: create the generated keys Secret once (a POST: RBAC `create`). 409 means
        a Secret of that name exists: ours (after a restart) or the user's is used as it is and never
        overwritten (users rotate keys by editing it); one an earlier BigModel of this name left is waited
        for (OldChildError) until garbage collection removes it, then ours is created."""
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
            await self._existing_keys(body, secret_name)
        self.keys_created.add(uid)

    async def _existing_keys(self, body: dict[str, Any], secret_name: str) -> None:
        """Decide about a keys Secret that already exists: return to use it, raise OldChildError to wait."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        if self.config.check_secrets:
            try:
                existing = await self.kube.get("Secret", namespace, secret_name)
            except ApiError as error:
                if error.status != 403:
                    raise
                log.warning("not allowed to read Secret %s/%s; using it as it is", namespace, secret_name)
                return
            if existing is None:
                raise OldChildError(f"Secret {secret_name} was being removed; creating it again")
            with contextlib.suppress(NotControlledError):  # the user's: used as it is
                check_control(existing, body)  # ours (a restart) or an orphan pass; an earlier one's raises
            return
        if _age_seconds(body) < KEYS_CONFLICT_WINDOW_SECONDS:
            raise OldChildError(
                f"Secret {secret_name} exists; if an earlier BigModel {name} left it, garbage collection removes "
                f"it soon (the operator may not read Secrets here: it creates its own until "
                f"{KEYS_CONFLICT_WINDOW_SECONDS:g} s after this BigModel's creation, then uses the existing one)"
            )

    def _announce_scaling(self, body: dict[str, Any], old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """An Event ScaledUp / ScaledDown when Serve started a change of the engine replica count."""
        if not new or new == old:
            return
        up = new["to"] > new["from"]
        verb = "adding" if up else "removing"
        message = f"Serve is {verb} engine replicas: {new['from']} -> {new['to']} ({new['reason']})"
        self.emit(body, "Normal", "ScaledUp" if up else "ScaledDown", message)

    def _previous_adapters(self, body: dict[str, Any]) -> list[dict[str, Any]] | None:
        """status.adapters as we last wrote them: only the operator writes them, so what it wrote
        last is newest, even when the watch has not delivered it or the spec moved on since."""
        written = self.written(body)
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


def spec_at_revision(spec: BigModelSpec, revision: str | None) -> BigModelSpec:
    """The spec as rendered: an hf:// revision pinned to the commit it resolved to (the exact cache key)."""
    if not revision or revision == spec.model.revision:
        return spec
    return spec.model_copy(update={"model": spec.model.model_copy(update={"revision": revision})})
