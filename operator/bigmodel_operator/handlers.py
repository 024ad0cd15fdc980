"""kopf glue, kept thin: watch events feed ClusterState and trigger the per-object reconcile.

Why on.event rather than on.create/update/resume: the reconcile is level-based and idempotent, so it
can run on any event; kopf's change-detecting handlers would add an annotation write per change.
Retries and coalescing live in reconcile.runner. See docs/development.md.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from bigmodel_operator.reconcile.base_reconciler import BaseReconciler
from bigmodel_operator.reconcile.bigmodel_reconcile import BigModelReconciler
from bigmodel_operator.reconcile.finetunejob_reconcile import FineTuneJobReconciler
from bigmodel_operator.reconcile.runner import KeyedRunner
from bigmodel_operator.reconcile.state import OWNER_LABELS, ClusterState, note_outside
from bigmodel_operator.status.startup_phases import pod_record

log = logging.getLogger(__name__)
MANAGED = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
MANAGED_SELECTOR = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
# Pods we watch: trainer pods, and a BigModel's Ray pods (cold start phases, GPU-seconds).
OUR_POD_SELECTOR = f"{MANAGED_SELECTOR},{naming.LABEL_COMPONENT} in (trainer,model-server)"
EVENT_QUEUE = 10_000
EVENT_HOLD_SECONDS = 5.0
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
CHILD_RESOURCES = (  # (group, version, plural) of every kind we create and watch (child_event below)
    ("ray.io", "v1", "rayservices"),
    ("networking.k8s.io", "v1", "ingresses"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("batch", "v1", "jobs"),
    ("", "v1", "configmaps"),
    ("", "v1", "serviceaccounts"),
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
)
"""Watched with a server-side label selector (only what we made crosses the wire), so that a child's deletion
wakes its owner at once. The generated API-keys Secret is the one child not watched (the operator may only
create Secrets); base_reconciler's RetryLaterError covers its wait."""


class Operator:
    """The operator's long-lived parts, kept in kopf's memo."""

    def __init__(self, config: OperatorConfig, kube: Kube) -> None:
        self.config = config
        self.kube = kube
        kube.on_request = note_outside  # an API call inside a reconcile: its outcome is not settled
        self.state = ClusterState()
        self.runner = KeyedRunner("reconcile", concurrency=config.max_concurrent_reconciles)
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
        """Post queued Events; while reconciles run, hold each back up to EVENT_HOLD_SECONDS, so a burst's
        writes of children and status go first."""
        while True:
            body, type_, reason, message = await self.events.get()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.runner.idle.wait(), EVENT_HOLD_SECONDS)
            await post_event(self.kube, body, type_, reason, message)

    def remembered(self) -> int:
        """Entries the operator keeps per object, over every table (the cache and its indexes, the runner, the
        reconcilers' per-uid memory): back to 0 once every object it watched is gone (metric
        bigmodel_operator_remembered_entries; nothing may grow with objects that come and go)."""
        return self.state.entries() + self.runner.tracked() + self.bigmodels.entries()

    def reconciler(self, kind: str) -> BaseReconciler:
        return self.bigmodels if kind == "BigModel" else self.finetunejobs

    def trigger(self, kind: str, namespace: str, name: str) -> None:
        key = (kind, namespace, name)
        body = self.state.get(*key)
        if body is None:
            return
        reconciler = self.reconciler(kind)

        async def work() -> None:
            if self.state.settled(key):  # nothing it read has moved since its last clean run
                self.stats.skipped[kind] += 1
                return
            await self.stats.timed(kind, lambda: reconciler.run(key))

        self.runner.trigger(key, work, generation=body["metadata"].get("generation"))

    def trigger_all(self, kind: str) -> None:
        """The resync: every object of a kind whose outcome is not settled (state.settled: a few dict lookups)."""
        for namespace, name in self.state.names(kind):
            if not self.state.settled((kind, namespace, name)):
                self.trigger(kind, namespace, name)


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's last-handled state, turned off: every handler here is an on.event handler, which sees raw events and
    never a diff. kopf still builds the "essence" of the body and diffs it against the stored one on every watch
    event (deep copies of the whole body, managedFields included: ~3/4 of kopf's CPU per event for a RayService,
    issue 21), for change-detecting handlers we do not have. With no essence stored or built the diff is empty;
    tests/unit/operator_runtime/test_child_watches.py checks that no handler needs one."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return None  # type: ignore[return-value]  # processing.py skips progress_storage.clear() on None

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def tune_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf settings that take per-event work off the operator (issue 21: CPU per BigModel in a burst)."""
    settings.posting.enabled = False  # we post our own, user-facing Events only
    settings.persistence.diffbase_storage = NoDiffBase()


def _op(memo: Any) -> Operator:
    operator: Operator = memo["operator"]
    return operator


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    tune_kopf(settings)
    settings.watching.server_timeout = 600
    for resource in CHILD_RESOURCES:
        settings.watching.label_selectors[resource] = MANAGED_SELECTOR
    settings.watching.label_selectors["", "v1", "pods"] = OUR_POD_SELECTOR
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
    """Feed the cache; on DELETED, drop every trace of the object (cache, runner, per-uid memory)."""
    body: dict[str, Any] | None = dict(event["object"]) if event.get("object") else None
    if not body:
        return None
    meta = body["metadata"]
    kind, namespace = body["kind"], meta.get("namespace", "")
    if event.get("type") == "DELETED":
        operator.state.drop(kind, namespace, meta["name"])
        if kind in {"BigModel", "FineTuneJob"}:
            operator.runner.forget((kind, namespace, meta["name"]))
            operator.reconciler(kind).forget(body)
        elif kind == "RayService":
            operator.bigmodels.worker_bounds.forget(meta.get("uid", ""))
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


async def child_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    """Any event on a child (also its deletion) wakes the owner its labels name."""
    operator = _op(memo)
    body: dict[str, Any] = dict(event.get("object") or {})
    labels = (body.get("metadata") or {}).get("labels") or {}
    owners = [(kind, labels[label]) for label, kind in OWNER_LABELS.items() if labels.get(label)]
    if not owners:
        return
    namespace = body["metadata"]["namespace"]
    if event.get("type") != "DELETED" and operator.state.holds(body):
        # The echo of our own write (ensure_child stored the apply's answer): nothing the owner reads moved, so
        # its reconcile would redo the same pass. One waiting for the cluster (RetryLater) still runs sooner.
        owners = [(kind, owner) for kind, owner in owners if operator.runner.is_waiting((kind, namespace, owner))]
    else:
        _track(operator, event)
    for kind, owner in owners:
        operator.trigger(kind, namespace, owner)


for _group, _version, _plural in CHILD_RESOURCES:
    kopf.on.event(_group, _version, _plural, labels=MANAGED, id=f"child_event/{_plural}")(child_event)
kopf.on.event("", "v1", "pods", labels={**MANAGED, naming.LABEL_COMPONENT: "trainer"}, id="child_event/trainer-pods")(
    child_event
)


@kopf.on.event("", "v1", "pods", labels={**MANAGED, naming.LABEL_COMPONENT: "model-server"})
async def model_pod_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    """Ray pods of a BigModel: their times (cold start phases) and resources (cost), kept in compact form."""
    operator = _op(memo)
    body: dict[str, Any] = dict(event.get("object") or {})
    owner = ((body.get("metadata") or {}).get("labels") or {}).get(naming.LABEL_BIGMODEL)
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
    product = None if event.get("type") == "DELETED" else body["metadata"]["labels"][GPU_PRODUCT_LABEL]
    if operator.state.set_gpu_node(name, product):
        operator.trigger_all("BigModel")
        operator.trigger_all("FineTuneJob")
