"""Cold starts and cost of one BigModel: observations in, status fields and Events out.

The pure parts are status/startup_phases.py and status/cost_accounting.py; this module gathers their
inputs (the Ray pods from the watch cache, what the replicas and the application wrote into the status)
and remembers what it announced, so each Event is posted once per operator run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.placement import Placement
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.reconcile.state import ClusterState, note_deadline
from bigmodel_operator.status.cost_accounting import ACCRUAL_PERIOD_S, AccrualInputs, accrual_due, accrue, pricing_for
from bigmodel_operator.status.startup_phases import Startups, parse_time, slow_phase, startups, summary

STARTUP_REFRESH_S = 30.0  # a cold start in progress is re-read this often (its seconds so far, slow phases)
EventSink = Callable[[dict[str, Any], str, str, str], None]  # (body, type, reason, message)


@dataclass
class ColdStartsAndCost:
    """What the status gets: `startup`, `lastColdStart`, `cost`, and the replica reports to prune."""

    startups: Startups
    cost: dict[str, Any] | None
    workers_alive: int = 0  # Ray worker pods that have not ended

    def status_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.startups.current is not None:
            out["startup"] = self.startups.current
        if self.startups.last is not None:
            out["lastColdStart"] = self.startups.last
        if self.cost is not None:
            out["cost"] = self.cost
        return out

    def prune_patch(self) -> dict[str, Any]:
        """Merge-patch entries removing reports whose replica is gone."""
        return {"replicaStartups": dict.fromkeys(self.startups.prune)} if self.startups.prune else {}


class ColdStartTracker:
    """Per-BigModel memory across reconciles: pods that had a replica, Events already posted."""

    def __init__(self, state: ClusterState, config: OperatorConfig, emit: EventSink) -> None:
        self.state = state
        self.config = config
        self.emit = emit
        self.had_replica: dict[str, set[str]] = {}  # BigModel uid -> worker pods that ran an engine replica
        self.announced: dict[str, set[tuple[str, str]]] = {}  # uid -> (reason, replica or pod) posted

    def observe(
        self,
        body: dict[str, Any],
        spec: BigModelSpec,
        place: Placement,
        previous: dict[str, Any] | None,
        now: datetime,
    ) -> ColdStartsAndCost:
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
        pods = self.state.pods_of(namespace, name)
        current = body.get("status") or {}
        reports = {k: v for k, v in (current.get("replicaStartups") or {}).items() if isinstance(v, dict)}
        had = self.had_replica.setdefault(uid, set())
        had.update(str(r["pod"]) for r in reports.values() if r.get("pod"))
        found = startups(reports, pods, (previous or {}).get("lastColdStart"), had, now)
        workers = [p for p in pods.values() if p.node_type != "head"]
        usage = current.get("usage")
        cost = (previous or {}).get("cost")
        inputs = AccrualInputs(cost, workers, usage, now)
        if accrual_due(inputs):
            gpu = spec.resources.gpu if spec.resources else None
            product = next((self.state.gpu_nodes.get(p.node or "") for p in workers if p.node), None)
            product = product or (gpu.product if gpu else None)
            cost = accrue(inputs, pricing_for(place.on_gpu, product, self.config.prices))
        alive = sum(1 for p in workers if p.ended is None)
        # The outcome moves with the clock: a cold start's seconds, and the account every period with pods.
        if found.current is not None:
            note_deadline(time.time() + STARTUP_REFRESH_S)
        accrued = parse_time((cost or {}).get("accruedUntil"))
        if alive and accrued is not None:
            note_deadline(accrued.timestamp() + ACCRUAL_PERIOD_S)
        return ColdStartsAndCost(found, cost, alive)

    def announce(self, body: dict[str, Any], seen: ColdStartsAndCost, now: datetime) -> None:
        """Events: each finished cold start with its phases; a slow phase or stalled download once."""
        meta = body["metadata"]
        posted = self.announced.setdefault(meta.get("uid", ""), set())
        for timeline in seen.startups.finished:
            key = ("ColdStart", f"{timeline.get('replica')}/{timeline.get('startedAt')}")
            if key not in posted:
                posted.add(key)
                failed = timeline.get("phase") == "Failed"
                reason = "ColdStartFailed" if failed else "ReplicaStarted"
                self.emit(body, "Warning" if failed else "Normal", reason, summary(timeline))
        current = seen.startups.current
        if current is None:
            return
        reports = (body.get("status") or {}).get("replicaStartups") or {}
        report = reports.get(current.get("replica") or "") if current.get("replica") else None
        pod = self.state.pods_of(meta["namespace"], meta["name"]).get(current.get("pod") or "")
        slow = slow_phase(current, pod, report, self.config.download_stall_seconds, now)
        if slow is None:
            return
        reason, message = slow
        key = (reason, f"{current.get('replica') or current.get('pod')}/{current.get('phase')}")
        if key not in posted:
            posted.add(key)
            self.emit(body, "Warning", reason, message)

    def entries(self) -> int:
        return len(self.had_replica) + len(self.announced)

    def forget(self, uid: str) -> None:
        self.had_replica.pop(uid, None)
        self.announced.pop(uid, None)
