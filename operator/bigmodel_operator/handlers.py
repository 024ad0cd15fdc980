"""kopf glue, kept thin: watch events feed ClusterState and trigger the per-object reconcile.

Why on.event rather than on.create/update/resume: the reconcile is level-based and idempotent, so it
can run on any event; kopf's change-detecting handlers would add an annotation write per change and
a batching delay. Retries and coalescing live in reconcile.runner. See docs/development.md.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import kopf

from bigmodel_operator import naming
from bigmodel_operator.api import GROUP, VERSION
from bigmodel_operator.config import OperatorConfig, load_config
from bigmodel_operator.kube import Kube, load_credentials, post_event
from bigmodel_operator.metrics import ReconcileStats, serve_metrics
from bigmodel_operator.reconcile.adapter_promotion import deploying_jobs
from bigmodel_operator.reconcile.bigmodel_reconcile import BigModelReconciler
from bigmodel_operator.reconcile.children import AlreadyReportedError
from bigmodel_operator.reconcile.finetunejob_reconcile import FineTuneJobReconciler
from bigmodel_operator.reconcile.runner import KeyedRunner
from bigmodel_operator.reconcile.state import ClusterState
from bigmodel_operator.status.startup_phases import pod_record

log = logging.getLogger(__name__)
MANAGED = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
EVENT_QUEUE = 10_000
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


class Operator:
    """The operator's long-lived parts, kept in kopf's memo."""

    def __init__(self, config: OperatorConfig, kube: Kube) -> None:
        self.config = config
        self.kube = kube
        self.state = ClusterState()
        self.runner = KeyedRunner("reconcile")
        self.events: asyncio.Queue[tuple[dict[str, Any], str, str, str]] = asyncio.Queue(maxsize=EVENT_QUEUE)
        self.events_dropped = 0
        self.stats = ReconcileStats()
        self.bigmodels = BigModelReconciler(kube, self.state, config, self.emit)
        self.finetunejobs = FineTuneJobReconciler(kube, self.state, config, self.emit)

    def emit(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Queue an Event. Events are best effort and posted by one background worker, so a burst of
        creates spends the apiserver's capacity on children and status first (like client-go's
        asynchronous broadcaster); when the queue is full the Event is dropped and counted."""
        try:
            self.events.put_nowait((body, type_, reason, message))
        except asyncio.QueueFull:
            self.events_dropped += 1

    async def post_events(self) -> None:
        while True:
            body, type_, reason, message = await self.events.get()
            await post_event(self.kube, body, type_, reason, message)

    def trigger(self, kind: str, namespace: str, name: str) -> None:
        reconciler = self.bigmodels if kind == "BigModel" else self.finetunejobs

        async def work() -> None:
            body = self.state.get(kind, namespace, name)
            if body is None:
                return
            try:
                await self.stats.timed(kind, lambda: reconciler.reconcile(body))
            except AlreadyReportedError:
                raise
            except Exception as error:
                # Every failure reaches the object's status and an Event; the runner then retries.
                await reconciler.report_failure(body, error)
                raise

        self.runner.trigger((kind, namespace, name), work)

    def trigger_all(self, kind: str) -> None:
        for obj_kind, namespace, name in list(self.state.objects):
            if obj_kind == kind:
                self.trigger(kind, namespace, name)


def _op(memo: Any) -> Operator:
    operator: Operator = memo["operator"]
    return operator


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.enabled = False  # we post our own, user-facing Events only
    settings.batching.batch_window = 0.01
    settings.watching.server_timeout = 600
    config = memo.get("config") or load_config()
    operator = Operator(config, Kube(load_credentials()))
    memo["operator"] = operator
    memo["resync"] = asyncio.get_running_loop().create_task(_resync(operator))
    memo["events"] = asyncio.get_running_loop().create_task(operator.post_events())
    if config.metrics_address:
        memo["metrics"] = await serve_metrics(operator, config.metrics_address)
    log.info("bigmodel-operator started (hub config fetch: %s)", config.fetch_hub_config)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for key in ("resync", "events"):
        if task := memo.get(key):
            task.cancel()
    operator = memo.get("operator")
    if operator:
        await operator.kube.close()
    if memo.get("metrics"):
        await memo["metrics"].cleanup()


async def _resync(operator: Operator) -> None:
    """Level-based safety net: reconcile everything periodically (no writes when nothing changed)."""
    while True:
        await asyncio.sleep(operator.config.resync_seconds)
        operator.trigger_all("BigModel")
        operator.trigger_all("FineTuneJob")


def _track(operator: Operator, event: kopf.RawEvent) -> dict[str, Any] | None:
    body: dict[str, Any] | None = dict(event["object"]) if event.get("object") else None
    if not body:
        return None
    meta = body["metadata"]
    if event.get("type") == "DELETED":
        operator.state.drop(body["kind"], meta.get("namespace", ""), meta["name"])
        operator.runner.forget((body["kind"], meta.get("namespace", ""), meta["name"]))
        return None
    operator.state.put(body)
    return body


@kopf.on.event(GROUP, VERSION, "bigmodels")
async def bigmodel_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    operator = _op(memo)
    body = _track(operator, event)
    if body:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        operator.trigger("BigModel", namespace, name)
        # Finished FineTuneJobs that deploy here read status.adapters for their Promoted condition.
        for ftj in deploying_jobs(operator.state, namespace, name):
            if (ftj.get("status") or {}).get("phase") == "Succeeded":
                operator.trigger("FineTuneJob", namespace, ftj["metadata"]["name"])


@kopf.on.event(GROUP, VERSION, "finetunejobs")
async def finetunejob_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    operator = _op(memo)
    body = _track(operator, event)
    raw: dict[str, Any] = dict(event.get("object") or {})
    if body:
        operator.trigger("FineTuneJob", body["metadata"]["namespace"], body["metadata"]["name"])
    # The BigModel it deploys to renders its adapter (also when the job is deleted: the version goes).
    # Progress reports (MODIFIED while running) change nothing there: skip them.
    target = ((raw.get("spec") or {}).get("deployTo") or {}).get("bigModel")
    finished = (raw.get("status") or {}).get("phase") == "Succeeded"
    if target and raw.get("metadata", {}).get("namespace") and (finished or event.get("type") != "MODIFIED"):
        operator.trigger("BigModel", raw["metadata"]["namespace"], target)


def _owner_from_labels(body: dict[str, Any], label: str) -> str | None:
    return ((body.get("metadata") or {}).get("labels") or {}).get(label)


async def _child_event(event: kopf.RawEvent, memo: Any, owner_label: str, owner_kind: str) -> None:
    operator = _op(memo)
    body: dict[str, Any] = dict(event.get("object") or {})
    owner = _owner_from_labels(body, owner_label)
    if not owner:
        return
    _track(operator, event)
    operator.trigger(owner_kind, body["metadata"]["namespace"], owner)


@kopf.on.event("ray.io", "v1", "rayservices", labels=MANAGED)
async def rayservice_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    await _child_event(event, memo, naming.LABEL_BIGMODEL, "BigModel")


@kopf.on.event("networking.k8s.io", "v1", "ingresses", labels=MANAGED)
async def ingress_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    await _child_event(event, memo, naming.LABEL_BIGMODEL, "BigModel")


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=MANAGED)
async def network_policy_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    await _child_event(event, memo, naming.LABEL_BIGMODEL, "BigModel")


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def job_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    await _child_event(event, memo, naming.LABEL_FINETUNEJOB, "FineTuneJob")


@kopf.on.event("", "v1", "pods", labels={naming.LABEL_MANAGED_BY: naming.MANAGED_BY, naming.LABEL_COMPONENT: "trainer"})
async def trainer_pod_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    await _child_event(event, memo, naming.LABEL_FINETUNEJOB, "FineTuneJob")


@kopf.on.event(
    "", "v1", "pods", labels={naming.LABEL_MANAGED_BY: naming.MANAGED_BY, naming.LABEL_COMPONENT: "model-server"}
)
async def model_pod_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    """Ray pods of a BigModel: their times (cold start phases) and resources (cost), kept in compact form."""
    operator = _op(memo)
    body: dict[str, Any] = dict(event.get("object") or {})
    owner = _owner_from_labels(body, naming.LABEL_BIGMODEL)
    namespace = (body.get("metadata") or {}).get("namespace")
    if not owner or not namespace:
        return
    deleted = datetime.now(UTC).replace(microsecond=0) if event.get("type") == "DELETED" else None
    operator.state.put_model_pod(namespace, owner, pod_record(body, deleted))
    operator.trigger("BigModel", namespace, owner)


@kopf.on.event("", "v1", "nodes", labels={GPU_PRODUCT_LABEL: kopf.PRESENT})
async def node_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    operator = _op(memo)
    body: dict[str, Any] = dict(event.get("object") or {})
    name = body.get("metadata", {}).get("name")
    if not name:
        return
    before = operator.state.gpu_products()
    if event.get("type") == "DELETED":
        operator.state.gpu_nodes.pop(name, None)
    else:
        operator.state.gpu_nodes[name] = body["metadata"]["labels"][GPU_PRODUCT_LABEL]
    if operator.state.gpu_products() != before:
        operator.trigger_all("BigModel")
        operator.trigger_all("FineTuneJob")
