"""Translate a RayService's (and Ingress's) state into BigModel conditions, replicas and URL."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bigmodel_operator import conditions as c
from bigmodel_operator.conditions import Blocker, Reason, set_condition

STARTUP_BUDGET_SECONDS = 1800
"""How long the RayService may stay not ready before Ready says StartupSlow. A 16 GB model downloads in
minutes, a 140 GB one in tens of minutes. KubeRay itself waits indefinitely (it ignores the old
*UnhealthySecondThreshold fields), so this only explains a slow start; nothing is restarted."""
STARTING_REASONS = frozenset({Reason.RAYSERVICE_DEPLOYING, Reason.NO_SERVE_ENDPOINTS})
__all__ = ["BigModelObservation", "Blocker", "compute_status", "startup_deadline", "startup_overdue"]


@dataclass
class BigModelObservation:
    """Everything the status of one BigModel is computed from."""

    generation: int | None
    desired_replicas: int
    plan: dict[str, Any] | None
    plan_reason: str
    plan_message: str
    blockers: list[Blocker] = field(default_factory=list)
    warnings: list[Blocker] = field(default_factory=list)
    rayservice: dict[str, Any] | None = None
    ingress_requested: bool = False
    ingress: dict[str, Any] | None = None
    url: str | None = None
    selector: str | None = None
    rayservice_name: str | None = None
    scale_to_zero: bool = False  # minReplicas 0 (or replicas 0)
    engine_ready: int | None = None  # engine replicas that reported ready (None: no replica reports)
    engine_starting: int = 0  # replicas, or new worker pods, in a cold start
    wake_timeout_s: int | None = None
    startup_phase: str | None = None  # the phase of the cold start in progress
    ready_engines: int | None = None  # engine replicas Serve runs (status/engine_replicas.py); None: unknown
    last_scaled: dict[str, Any] | None = None  # status.lastScaled


def _app_statuses(rayservice: dict[str, Any]) -> dict[str, Any]:
    active = (rayservice.get("status") or {}).get("activeServiceStatus") or {}
    statuses: dict[str, Any] = active.get("applicationStatuses") or {}
    return statuses


def _ready_workers(rayservice: dict[str, Any]) -> int:
    active = (rayservice.get("status") or {}).get("activeServiceStatus") or {}
    cluster = active.get("rayClusterStatus") or {}
    return int(cluster.get("readyWorkerReplicas") or cluster.get("availableWorkerReplicas") or 0)


def _rayservice_condition(obs: BigModelObservation) -> tuple[bool, str, str]:
    """(ready, reason, message) of the RayService child."""
    rs = obs.rayservice
    if rs is None:
        return False, Reason.RAYSERVICE_DEPLOYING, "RayService not created yet"
    status = rs.get("status") or {}
    endpoints = int(status.get("numServeEndpoints") or 0)
    for app_name, app in _app_statuses(rs).items():
        state = (app or {}).get("status", "")
        if state in {"DEPLOY_FAILED", "UNHEALTHY"}:
            detail = (app or {}).get("message") or "no message"
            return False, Reason.RAYSERVICE_FAILED, f"Serve application {app_name} is {state}: {detail}"
    ready_cond = c.get_condition(status.get("conditions"), "Ready")
    upgrading = c.get_condition(status.get("conditions"), "UpgradeInProgress")
    apps_running = bool(_app_statuses(rs)) and all(
        (a or {}).get("status") == "RUNNING" for a in _app_statuses(rs).values()
    )
    if endpoints > 0 and apps_running and (ready_cond is None or ready_cond.get("status") == "True"):
        if upgrading and upgrading.get("status") == "True":
            return True, Reason.UPGRADING, upgrading.get("message") or "new cluster is being prepared"
        return True, Reason.RAYSERVICE_READY, f"{endpoints} Serve endpoint(s) ready"
    if apps_running and endpoints == 0:
        return False, Reason.NO_SERVE_ENDPOINTS, "the application runs but no pod serves traffic yet"
    message = (ready_cond or {}).get("message") or "waiting for KubeRay to start the cluster and deploy the app"
    return False, Reason.RAYSERVICE_DEPLOYING, message


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def startup_overdue(
    previous_conditions: list[dict[str, Any]] | None, now: datetime, budget_s: float = STARTUP_BUDGET_SECONDS
) -> str | None:
    """When RayServiceReady turned False (its lastTransitionTime, which moves only on a flip), if that was
    more than `budget_s` before `now`; None while within the budget, ready, or never recorded."""
    cond = c.get_condition(previous_conditions, c.RAYSERVICE_READY)
    if cond is None or cond.get("status") != "False":
        return None
    since = _parse_time(cond.get("lastTransitionTime"))
    if since is None or (now - since).total_seconds() <= budget_s:
        return None
    return str(cond["lastTransitionTime"])


def startup_deadline(conditions: list[dict[str, Any]] | None, budget_s: float = STARTUP_BUDGET_SECONDS) -> float | None:
    """When (epoch seconds) a start that is not ready yet becomes overdue: the one moment the status can
    change with nothing else changing. None when ready, or already past it."""
    cond = c.get_condition(conditions, c.RAYSERVICE_READY)
    if cond is None or cond.get("status") != "False" or cond.get("reason") not in STARTING_REASONS:
        return None
    since = _parse_time(cond.get("lastTransitionTime"))
    return None if since is None else since.timestamp() + budget_s + 1


def startup_slow_message(since: str, detail: str, selector: str | None, rayservice: str | None) -> str:
    """Ready's message for a slow start: since when (a timestamp, so resyncs write nothing new), KubeRay's
    own message, and where to look."""
    pods = f"kubectl get pods -l {selector}" if selector else "kubectl get pods"
    head = f"kubectl logs -l ray.io/node-type=head,{selector} -c ray-head" if selector else "the Ray head's log"
    describe = f"kubectl describe rayservice {rayservice}" if rayservice else "kubectl describe rayservice"
    return (
        f"not ready since {since} (over {STARTUP_BUDGET_SECONDS // 60} min): {detail.rstrip('.')}. "
        f"KubeRay keeps waiting; look at `{pods}` (Pending: no capacity; ImagePullBackOff: the image), "
        f"`{describe}` and the Serve log on the head (`{head}`: model download, engine start)"
    )


def scaled_to_zero(obs: BigModelObservation) -> tuple[str, str] | None:
    """(reason, message) of a Ready=True BigModel whose engine has no ready replica: ScaledToZero while
    none starts, Waking while one does. The endpoint answers (head and ingress stay); generation requests
    are held up to the wake timeout. None when the engine has a ready replica or cannot scale to zero."""
    if not obs.scale_to_zero or obs.engine_ready is None or obs.engine_ready > 0:
        return None
    hold = f"held up to {obs.wake_timeout_s} s" if obs.wake_timeout_s else "held"
    if obs.engine_starting:
        phase = f" (phase {obs.startup_phase})" if obs.startup_phase else ""
        return Reason.WAKING, f"an engine replica is starting from zero{phase}; requests are {hold} meanwhile"
    return (
        Reason.SCALED_TO_ZERO,
        f"no engine replica runs (scaled to zero when idle); the next request wakes one and is {hold}",
    )


def _ingress_condition(obs: BigModelObservation) -> tuple[bool, str, str]:
    if not obs.ingress_requested:
        return True, Reason.INGRESS_NOT_REQUESTED, "spec.expose.ingress is not set"
    if obs.ingress is None:
        return False, Reason.INGRESS_PENDING, "Ingress not created yet"
    lb = ((obs.ingress.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    if lb:
        address = lb[0].get("hostname") or lb[0].get("ip") or "assigned"
        return True, Reason.INGRESS_READY, f"address {address}"
    return False, Reason.INGRESS_PENDING, "waiting for the ingress controller to assign an address"


def compute_status(
    obs: BigModelObservation, previous: dict[str, Any] | None, now: datetime | None = None
) -> dict[str, Any]:
    """The full desired status block; conditions keep their transition times when unchanged.

    `now` (default: the clock) only decides whether a start is overdue (StartupSlow)."""
    gen = obs.generation
    conds = list((previous or {}).get("conditions") or [])
    planned_ok = obs.plan_reason == Reason.PLANNED
    conds = set_condition(conds, c.PLANNED, planned_ok, obs.plan_reason, obs.plan_message, gen)
    rs_ready, rs_reason, rs_message = _rayservice_condition(obs)
    if not rs_ready and rs_reason in STARTING_REASONS and obs.rayservice is not None:
        since = startup_overdue(conds, now or datetime.now(UTC))
        if since:
            rs_reason, rs_message = (
                Reason.STARTUP_SLOW,
                startup_slow_message(since, rs_message, obs.selector, obs.rayservice_name),
            )
    ing_ready, ing_reason, ing_message = _ingress_condition(obs)
    conds = set_condition(conds, c.RAYSERVICE_READY, rs_ready, rs_reason, rs_message, gen)
    conds = set_condition(conds, c.INGRESS_READY, ing_ready, ing_reason, ing_message, gen)
    ready_workers = _ready_workers(obs.rayservice) if obs.rayservice else 0
    if obs.ready_engines is not None:  # what Serve reports (scaled to zero: 0 replicas, still Ready)
        ready_replicas = obs.ready_engines if rs_ready else 0
    else:
        ready_replicas = min(obs.desired_replicas, ready_workers) if rs_ready else 0
        if rs_ready and ready_replicas == 0:
            ready_replicas = 1 if obs.desired_replicas else 0
    degraded = rs_ready and 0 < ready_replicas < obs.desired_replicas
    if obs.blockers:
        first = obs.blockers[0]
        ready, reason, message = False, first.reason, "; ".join(b.message for b in obs.blockers)
    elif not rs_ready:
        ready, reason, message = False, rs_reason, rs_message
    elif not ing_ready:
        ready, reason, message = False, ing_reason, ing_message
    else:
        ready, reason, message = True, Reason.AS_EXPECTED, f"serving at {obs.url}" if obs.url else "serving"
        zero = scaled_to_zero(obs)
        if zero is not None:
            reason, message = zero
            ready_replicas = obs.engine_ready or 0
            degraded = False
    if obs.warnings and not ready:
        message = "; ".join([message, *(w.message for w in obs.warnings)])
        if reason in STARTING_REASONS | {Reason.STARTUP_SLOW}:
            reason = obs.warnings[0].reason  # the more specific cause (no GPU node) names the fix
    conds = set_condition(conds, c.READY, ready, reason, message, gen)
    deg_reason = Reason.PARTIALLY_READY if degraded else Reason.AS_EXPECTED
    deg_message = f"{ready_replicas}/{obs.desired_replicas} replicas ready" if degraded else "no degradation"
    conds = set_condition(conds, c.DEGRADED, degraded, deg_reason, deg_message, gen)
    status: dict[str, Any] = {
        "observedGeneration": gen,
        "conditions": conds,
        "replicas": obs.desired_replicas,
        "readyReplicas": ready_replicas,
    }
    if obs.scale_to_zero and obs.engine_ready is not None:  # the engine's own count: 0/0 at zero, honestly
        status["replicas"] = obs.engine_ready + obs.engine_starting
        status["readyReplicas"] = obs.engine_ready if rs_ready else 0
    for key, value in (
        ("lastScaled", obs.last_scaled),
        ("plan", obs.plan),
        ("url", obs.url if ready or obs.url else None),
        ("selector", obs.selector),
        ("rayService", obs.rayservice_name),
    ):
        if value is not None:
            status[key] = value
    return status
