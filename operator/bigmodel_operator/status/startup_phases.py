"""Cold starts from what Kubernetes and the engine replicas report (pure; the reconcile does the I/O).

A replica's cold start is the pod's phases followed by the replica's own:

    Scheduling    pod created           -> PodScheduled=True        (Kubernetes: the scheduler bound it)
    PullingImage  PodScheduled          -> ray container running   (Kubernetes: image pull, container create)
    StartingRay   container running     -> replica constructed     (Ray starts and joins, Serve places the
                                                                     replica, Python imports)
    Downloading   } reported by the replica itself (status.replicaStartups, bigmodel_serving.startup_report):
    Loading       } our downloader's bytes, vLLM's own log lines
    Compiling     }
    Ready         replica's engine started

The pod's phases belong to a replica's cold start only when it is the first replica in that pod (a replica
restarted in a running pod reports `firstOnPod: false`). A new worker pod without a report yet is a cold
start in its Kubernetes phases (the Ray autoscaler adds a worker only for a replica waiting for one).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bigmodel_operator.api.base import cpu_cores

ENGINE_PHASES = ("Downloading", "Loading", "Compiling")
STARTING_RAY_MAX_S = 1800.0
"""A worker pod running this long without an engine report is not starting one (it idles until the Ray
autoscaler releases it); the operator's own memory of pods that had a replica says the same sooner."""


def parse_time(text: object) -> datetime | None:
    """RFC 3339 (Kubernetes' seconds, or our milliseconds) as an aware datetime; None if absent or bad."""
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def rfc3339(when: datetime) -> str:
    """Kubernetes' format when whole seconds, else with milliseconds."""
    when = when.astimezone(UTC)
    if when.microsecond == 0:
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------------------------
# what a pod says
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodRecord:
    """The parts of a model pod the operator keeps (the watch cache keeps no pod specs)."""

    name: str
    node_type: str  # head | worker
    created: datetime | None
    scheduled: datetime | None
    started: datetime | None  # the Ray container running
    ready: datetime | None
    ended: datetime | None  # deleted or terminated
    node: str | None
    gpus: int
    cpus: float
    unschedulable: str | None = None  # the scheduler's message while Pending
    waiting: str | None = None  # the container's waiting reason (ImagePullBackOff, ...)


def _cpu_cores(value: object) -> float:
    try:
        return cpu_cores(str(value or "0"))
    except ValueError:
        return 0.0


def pod_record(pod: dict[str, Any], deleted_at: datetime | None = None) -> PodRecord:
    """A PodRecord from a pod body (a watch event's object); `deleted_at` for a DELETED event."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    scheduled = conditions.get("PodScheduled") or {}
    ready = conditions.get("Ready") or {}
    containers = spec.get("containers") or [{}]
    ray = next((c for c in containers if str(c.get("name", "")).startswith("ray-")), containers[0])
    limits = (ray.get("resources") or {}).get("limits") or {}
    requests = (ray.get("resources") or {}).get("requests") or {}
    statuses = status.get("containerStatuses") or []
    ray_status = next((s for s in statuses if s.get("name") == ray.get("name")), statuses[0] if statuses else {})
    state = ray_status.get("state") or {}
    started = parse_time((state.get("running") or {}).get("startedAt"))
    terminated = parse_time((state.get("terminated") or {}).get("finishedAt"))
    ended = deleted_at or parse_time(meta.get("deletionTimestamp"))
    if ended is None and status.get("phase") in {"Succeeded", "Failed"}:
        ended = terminated
    if started is None and terminated is not None:
        started = parse_time((state.get("terminated") or {}).get("startedAt"))
    unschedulable = None
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        unschedulable = scheduled.get("message") or "Unschedulable"
    return PodRecord(
        name=str(meta.get("name", "")),
        node_type=str((meta.get("labels") or {}).get("ray.io/node-type", "worker")),
        created=parse_time(meta.get("creationTimestamp")),
        scheduled=parse_time(scheduled.get("lastTransitionTime")) if scheduled.get("status") == "True" else None,
        started=started,
        ready=parse_time(ready.get("lastTransitionTime")) if ready.get("status") == "True" else None,
        ended=ended,
        node=spec.get("nodeName"),
        gpus=int(str(limits.get("nvidia.com/gpu") or requests.get("nvidia.com/gpu") or 0)),
        cpus=_cpu_cores(requests.get("cpu") or limits.get("cpu")),
        unschedulable=unschedulable,
        waiting=(state.get("waiting") or {}).get("reason"),
    )


# --------------------------------------------------------------------------------------------
# timelines
# --------------------------------------------------------------------------------------------


def _phase(name: str, start: datetime | None, end: datetime | None, now: datetime, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if start is not None:
        out["startedAt"] = rfc3339(start)
        out["seconds"] = round(max(0.0, ((end or now) - start).total_seconds()), 1)
    if end is not None:
        out["finishedAt"] = rfc3339(end)
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def download_eta(done: int | None, total: int | None, elapsed_s: float) -> float | None:
    """Seconds left at the average rate so far; None without progress."""
    if not done or not total or elapsed_s <= 0 or done >= total:
        return None if not (done and total and done >= total) else 0.0
    return round((total - done) / (done / elapsed_s), 1)


def pod_phases(pod: PodRecord, until: datetime | None, now: datetime) -> list[dict[str, Any]]:
    """Scheduling, PullingImage and StartingRay of a pod (StartingRay ends at `until`, the replica's start)."""
    phases = [_phase("Scheduling", pod.created, pod.scheduled, now, source="kubernetes")]
    if pod.scheduled is not None:
        phases.append(_phase("PullingImage", pod.scheduled, pod.started, now, source="kubernetes"))
    if pod.started is not None:
        phases.append(_phase("StartingRay", pod.started, until, now, source="kubernetes"))
    return phases


def replica_timeline(
    replica: str | None, report: dict[str, Any] | None, pod: PodRecord | None, now: datetime
) -> dict[str, Any]:
    """One replica's cold start (a StartupTimeline): its pod's phases when it is the first replica there,
    then what it reported; `phase` is where it is now."""
    report = report or {}
    constructed = parse_time(report.get("constructedAt"))
    phases: list[dict[str, Any]] = []
    own_pod = pod is not None and report.get("firstOnPod", True) is not False
    if pod is not None and own_pod:
        phases += pod_phases(pod, constructed, now)
    for entry in report.get("phases") or []:
        start, end = parse_time(entry.get("startedAt")), parse_time(entry.get("finishedAt"))
        eta = None
        if entry.get("name") == "Downloading" and end is None and start is not None:
            eta = download_eta(entry.get("bytesDone"), entry.get("bytesTotal"), (now - start).total_seconds())
        phases.append(
            _phase(
                str(entry.get("name")),
                start,
                end,
                now,
                bytesDone=entry.get("bytesDone"),
                bytesTotal=entry.get("bytesTotal"),
                cached=entry.get("cached"),
                etaSeconds=eta,
                source=entry.get("source"),
            )
        )
    ready = parse_time(report.get("readyAt"))
    if ready is not None:
        phases.append(_phase("Ready", ready, ready, now, source="engine"))
    began = (pod.created if pod is not None and own_pod else None) or constructed
    out: dict[str, Any] = {"phases": phases}
    if replica:
        out["replica"] = replica
    if pod is not None or report.get("pod"):
        out["pod"] = pod.name if pod is not None else report.get("pod")
    if began is not None:
        out["startedAt"] = rfc3339(began)
        out["seconds"] = round(max(0.0, ((ready or now) - began).total_seconds()), 1)
    if ready is not None:
        out["readyAt"] = rfc3339(ready)
    if report.get("failed"):
        out["phase"], out["message"] = "Failed", str(report["failed"])[:2000]
    elif ready is not None:
        out["phase"] = "Ready"
    else:
        running = [p for p in phases if "finishedAt" not in p and "startedAt" in p]
        out["phase"] = (running or phases or [{"name": "Scheduling"}])[-1]["name"]
    return out


@dataclass
class Startups:
    """What the status says about cold starts, and what the reconcile does about it."""

    current: dict[str, Any] | None  # status.startup
    last: dict[str, Any] | None  # status.lastColdStart
    ready_replicas: int  # engine replicas that reported ready and whose pod still runs
    starting: int  # replicas (or new worker pods) in a cold start
    finished: list[dict[str, Any]]  # timelines that finished since the last status (for Events)
    prune: list[str]  # replicaStartups keys to remove (pod gone, or failed and superseded)
    reporting: bool  # any replica has reported (else the counts come from KubeRay)


def _sort_key(timeline: dict[str, Any]) -> str:
    return str(timeline.get("startedAt") or "")


def startups(
    reports: dict[str, dict[str, Any]],
    pods: dict[str, PodRecord],
    previous_last: dict[str, Any] | None,
    had_replica: set[str],
    now: datetime,
) -> Startups:
    """Join the replicas' reports with the worker pods: the cold start in progress, the last finished one,
    engine replica counts, and reports to prune.

    `had_replica`: worker pods that have had an engine replica (the reconciler's memory), so an idle pod
    waiting for the Ray autoscaler to release it is not taken for a new cold start."""
    workers = {name: pod for name, pod in pods.items() if pod.node_type != "head"}
    alive = {name: pod for name, pod in workers.items() if pod.ended is None}
    prune: list[str] = []
    timelines: list[dict[str, Any]] = []
    reported_pods: set[str] = set()
    ready = 0
    for replica, report in sorted(reports.items()):
        pod_name = report.get("pod")
        pod = workers.get(pod_name) if pod_name else None
        if pod_name:
            reported_pods.add(pod_name)
            if pod_name not in alive and (pod is not None or _old(report, now)):
                prune.append(replica)  # its pod is gone: the replica with it
                continue
        timeline = replica_timeline(replica, report, pod, now)
        timelines.append(timeline)
        if timeline["phase"] == "Ready":
            ready += 1
        elif timeline["phase"] == "Failed" and _old(report, now):
            prune.append(replica)
    for name, pod in sorted(alive.items()):  # new worker pods whose replica has not reported yet
        if name in reported_pods or name in had_replica:
            continue
        if pod.started is not None and (now - pod.started).total_seconds() > STARTING_RAY_MAX_S:
            continue
        timelines.append(replica_timeline(None, None, pod, now))
    in_progress = sorted((t for t in timelines if t["phase"] not in ("Ready", "Failed")), key=_sort_key)
    done = sorted((t for t in timelines if t["phase"] in ("Ready", "Failed")), key=_done_at)
    finished = [t for t in done if _done_at(t) > _done_at(previous_last) and not _same_start(t, previous_last)]
    last = finished[-1] if finished else previous_last
    return Startups(
        current=in_progress[0] if in_progress else None,
        last=last,
        ready_replicas=ready,
        starting=len(in_progress),
        finished=finished,
        prune=prune,
        reporting=bool(reports),
    )


def _done_at(timeline: dict[str, Any] | None) -> str:
    if not timeline:
        return ""
    phases = timeline.get("phases") or [{}]
    return str(timeline.get("readyAt") or phases[-1].get("finishedAt") or timeline.get("startedAt") or "")


def _same_start(one: dict[str, Any] | None, two: dict[str, Any] | None) -> bool:
    if not one or not two:
        return False
    return (one.get("replica"), one.get("startedAt")) == (two.get("replica"), two.get("startedAt"))


def _old(report: dict[str, Any], now: datetime, after_s: float = 600.0) -> bool:
    updated = parse_time(report.get("updatedAt")) or parse_time(report.get("constructedAt"))
    return updated is None or (now - updated).total_seconds() > after_s


def summary(timeline: dict[str, Any]) -> str:
    """One line for an Event: total and each phase, e.g. `ready in 41.2 s: Scheduling 0.5 s, ...`."""
    parts = []
    for phase in timeline.get("phases") or []:
        if phase.get("name") == "Ready":
            continue
        text = f"{phase['name']} {phase.get('seconds', 0):g} s"
        if phase.get("name") == "Downloading":
            if phase.get("cached"):
                text += " (cached)"
            elif phase.get("bytesTotal"):
                text += f" ({phase['bytesTotal'] / 1e6:.1f} MB)"
        parts.append(text)
    outcome = "failed" if timeline.get("phase") == "Failed" else "ready"
    who = timeline.get("pod") or timeline.get("replica") or "replica"
    return f"{who} {outcome} in {timeline.get('seconds', 0):g} s: " + ", ".join(parts)


def slow_phase(
    timeline: dict[str, Any] | None,
    pod: PodRecord | None,
    report: dict[str, Any] | None,
    limit_s: float,
    now: datetime,
) -> tuple[str, str] | None:
    """(Event reason, message) when the current phase has taken longer than `limit_s` — for a download,
    when no new bytes were reported for that long (the replica reports at least every few seconds while
    bytes arrive) — else None."""
    if not timeline:
        return None
    current = next((p for p in timeline.get("phases") or [] if p.get("name") == timeline.get("phase")), None)
    if current is None or "finishedAt" in current:
        return None
    name, who = current["name"], timeline.get("pod") or timeline.get("replica") or "replica"
    if name == "Downloading":
        last = parse_time((report or {}).get("updatedAt")) or parse_time(current.get("startedAt"))
        if last is None or (now - last).total_seconds() <= limit_s:
            return None
        done, total = current.get("bytesDone"), current.get("bytesTotal")
        where = f" at {done / 1e6:.1f} of {total / 1e6:.1f} MB" if done is not None and total else ""
        return "DownloadStalled", f"{who}: the weight download made no progress for over {limit_s:.0f} s{where}"
    if float(current.get("seconds") or 0) <= limit_s:
        return None
    detail = ""
    if name == "Scheduling" and pod is not None and pod.unschedulable:
        detail = f": {pod.unschedulable}"
    elif name == "PullingImage" and pod is not None and pod.waiting:
        detail = f": {pod.waiting}"
    return "ColdStartSlow", f"{who}: {name} has taken {current.get('seconds'):g} s so far{detail}"
