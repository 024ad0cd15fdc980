"""Which adapter versions a BigModel serves, from its FineTuneJobs, its rollouts and its own status.

Pure: FineTuneJob bodies + the BigModel's spec + the previous `status.adapters` in, routes and the
new `status.adapters` out. Promotion state lives only in that status (the operator never writes a
spec, so Argo CD or Flux have nothing to fight); everything else is derived again on each reconcile,
so the same inputs always give the same routes and the same serveConfigV2.

Per adapter name (FineTuneJob `deployTo.adapterName`, default the job's name), the versions are the
FineTuneJobs that Succeeded with a passed eval gate, ordered by completion time:

- the stable version is the one the previous status calls Stable (while its job exists);
- the newest later version that was never rolled back or retired is the candidate; the first
  version of a name (no stable yet) becomes stable at once, as does one whose canary weight is 100;
- a hand override (`spec.rollouts[]`) then acts: promote (candidate or `version` becomes stable),
  rollback (candidate or `version` is marked RolledBack; rolling back the stable falls back to the
  newest older version), pin (`version` is the only one served; newer ones wait). A promote or rollback
  entry naming a `version` is about that version only: newer versions go through the canary (route
  mode auto) and the ingress's decisions act on them.

Phases: Stable, Candidate, RolledBack, Refused (gate failed, or the name cannot be served), Retired
(superseded by a newer stable or candidate), Waiting (held back by a pin).

Automatic canary decisions come from the ingress through `status.rolloutDecisions` (keyed by the
candidate's engine name; the ingress writes it, the operator only reads it). While the adapter has
no hand override about that version (action auto, or an entry naming an older version), a decision
about the version in force as Candidate, taken after it
became Candidate, acts like the overrides: rollback → RolledBack (its route weight 0 from then on,
so a restarted ingress never canaries it again), promote → Stable (the old stable Retired).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from bigmodel_operator.builders.serve_args import (
    DEFAULT_LORA_RANK,
    MAX_ENGINE_ADAPTER_NAME,
    AdapterVersion,
    Promotions,
    Route,
)

DEFAULT_CANARY_PERCENT = 20
STABLE, CANDIDATE, ROLLED_BACK, REFUSED, RETIRED, WAITING = (
    "Stable",
    "Candidate",
    "RolledBack",
    "Refused",
    "Retired",
    "Waiting",
)
# deployTo.canary (camelCase) -> AdapterRoute (snake_case)
_CANARY_FIELDS = {
    "minRequests": "min_requests",
    "falseRollbackRate": "false_rollback_rate",
    "maxErrorRateIncrease": "max_error_rate_increase",
    "maxLatencyRatio": "max_latency_ratio",
    "maxBadAnswerIncrease": "max_bad_answer_increase",
    "quality": "quality",
    "split": "split",
    "deadlineSeconds": "deadline_s",
    "onDeadline": "on_deadline",
}


@dataclass(frozen=True)
class Job:
    """What promotion needs of one FineTuneJob that deploys to this BigModel."""

    version: str  # the FineTuneJob's name
    adapter: str  # deployTo.adapterName (default: the job's name)
    uri: str  # status.adapterUri, else spec.output.uri
    rank: int
    phase: str | None
    completed: str  # status.completionTime ("" while running)
    passed: bool | None  # status.evaluation.passed (None: not reported)
    gate_message: str
    canary: dict[str, Any]
    orphan: bool = False  # its FineTuneJob is gone; served from what the status recorded
    not_compared: bool = False  # the gate had no held-out data (evaluation.outcome NotCompared)

    @property
    def engine_name(self) -> str:
        return f"{self.adapter}.{self.version}"

    @property
    def weight(self) -> float:
        return int(self.canary.get("weight") or DEFAULT_CANARY_PERCENT) / 100

    def as_version(self) -> AdapterVersion:
        return AdapterVersion(self.adapter, self.version, self.uri)


def job_of(body: dict[str, Any]) -> Job:
    """A FineTuneJob body (with spec.deployTo) as a `Job`."""
    meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    deploy = spec.get("deployTo") or {}
    evaluation = status.get("evaluation") or {}
    reasons = evaluation.get("reasons") or []
    return Job(
        version=meta["name"],
        adapter=deploy.get("adapterName") or meta["name"],
        uri=status.get("adapterUri") or (spec.get("output") or {}).get("uri", ""),
        rank=int((spec.get("method") or {}).get("rank") or DEFAULT_LORA_RANK),
        phase=status.get("phase"),
        completed=status.get("completionTime") or "",
        passed=evaluation.get("passed"),
        gate_message="; ".join(str(r) for r in reasons)[:1000],
        canary=dict(deploy.get("canary") or {}),
        not_compared=evaluation.get("outcome") == "NotCompared",
    )


def targets(body: dict[str, Any], bigmodel: str) -> bool:
    """Whether a FineTuneJob body deploys to `bigmodel` (same namespace assumed)."""
    return ((body.get("spec") or {}).get("deployTo") or {}).get("bigModel") == bigmodel


@dataclass
class PromotionResult:
    promotions: Promotions
    adapters: list[dict[str, Any]] = field(default_factory=list)  # status.adapters
    notes: list[str] = field(default_factory=list)  # overrides that could not act, for an Event
    unmounted: list[str] = field(default_factory=list)  # outputs on claims the spec does not mount, for an Event


def plan_promotions(
    jobs: list[Job],
    spec: dict[str, Any],
    previous: list[dict[str, Any]] | None,
    now: str,
    decisions: dict[str, Any] | None = None,
) -> PromotionResult:
    """Routes, mounts, LoRA sizing and the new status.adapters (see the module docstring);
    `decisions` is the BigModel's status.rolloutDecisions."""
    jobs = jobs + _outliving(jobs, previous)
    plain = {a.get("name") for a in spec.get("adapters") or []}
    rollouts = {r["adapter"]: r for r in spec.get("rollouts") or [] if r.get("adapter")}
    before = {(e.get("name"), e.get("version")): e for e in previous or []}
    routes: list[Route] = []
    entries: list[dict[str, Any]] = []
    notes: list[str] = []
    for name in sorted({job.adapter for job in jobs}):
        mine = sorted((j for j in jobs if j.adapter == name), key=lambda j: (j.completed, j.version))
        decided = {j.version: d for j in mine if isinstance(d := (decisions or {}).get(j.engine_name), dict)}
        phases, route, note = _decide(name, mine, plain, rollouts.get(name), before, decided)
        notes += note
        if route is not None:
            route = _with_canary_context(route, spec, before, now)
            routes.append(route)
        for job in mine:
            if job.version not in phases:
                continue
            phase, message = phases[job.version]
            entries.append(_entry(job, phase, message, route, before.get((name, job.version)), now))
    ranks = [job.rank for job in jobs]
    promotions = Promotions(
        routes=tuple(routes),
        mount_uris=tuple(sorted({job.uri for job in jobs if job.uri})),
        lora_rank=max(ranks) if ranks else None,
        adapter_names=len({job.adapter for job in jobs}),
    )
    return PromotionResult(promotions, entries, notes)


def _outliving(jobs: list[Job], previous: list[dict[str, Any]] | None) -> list[Job]:
    """Versions that serve (Stable or Candidate) whose FineTuneJob is gone: the status keeps them serving.

    What serves is recorded in the BigModel's status, not in the job: deleting a finished FineTuneJob (by
    hand, a TTL, a GitOps prune) leaves its adapter where it was. Taking it out is an explicit act: a
    `rollouts` entry `rollback` naming the version (the stable falls back to the newest older one)."""
    present = {(job.adapter, job.version) for job in jobs}
    out = []
    for entry in previous or []:
        name, version = entry.get("name"), entry.get("version")
        if entry.get("phase") not in (STABLE, CANDIDATE) or (name, version) in present or not name or not version:
            continue
        out.append(
            Job(
                version=str(version),
                adapter=str(name),
                uri=str(entry.get("uri") or ""),
                rank=int(entry.get("rank") or DEFAULT_LORA_RANK),
                phase="Succeeded",
                completed=str(entry.get("completed") or ""),
                passed=True,
                gate_message="",
                canary={},
                orphan=True,
            )
        )
    return out


def _decide(
    name: str,
    jobs: list[Job],
    plain: set[Any],
    override: dict[str, Any] | None,
    before: dict[tuple[Any, Any], dict[str, Any]],
    decided: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, tuple[str, str]], Route | None, list[str]]:
    """Phases by version, the route (None: nothing serves) and notes about the override; `decided`:
    the ingress's automatic decisions by version."""
    phases: dict[str, tuple[str, str]] = {}
    eligible: list[Job] = []
    for job in jobs:
        if job.phase != "Succeeded" or job.passed is None:
            continue  # still training, failed, or the trainer has not reported its evaluation yet
        if job.passed is False:
            what = "not promoted" if job.not_compared else "eval gate failed"
            phases[job.version] = (REFUSED, f"{what}: {job.gate_message}")
        elif name in plain:
            phases[job.version] = (REFUSED, f"spec.adapters already has an adapter named {name}")
        elif len(job.engine_name) > MAX_ENGINE_ADAPTER_NAME:
            phases[job.version] = (
                REFUSED,
                f"{job.engine_name} is longer than {MAX_ENGINE_ADAPTER_NAME} characters: shorten the adapter "
                "name or the FineTuneJob's name",
            )
        else:
            eligible.append(job)
    was = {job.version: (before.get((name, job.version)) or {}).get("phase") for job in eligible}
    order = {job.version: i for i, job in enumerate(eligible)}
    by_version = {job.version: job for job in eligible}
    rolled = {v for v, phase in was.items() if phase == ROLLED_BACK}
    action = (override or {}).get("action") or "auto"
    wanted = (override or {}).get("version")
    notes: list[str] = []
    if wanted and action != "auto" and wanted not in by_version:
        notes.append(f"rollouts[{name}]: version {wanted} is not a servable version of {name}; nothing changed")
        wanted, action = None, "auto"
    automatic = _automatic(decided or {}, was, before, name)
    if action in {"promote", "rollback"} and wanted:
        # An entry naming a version is about that version: the ingress still decides on newer ones.
        automatic = {v: d for v, d in automatic.items() if order[v] > order[wanted]}
    elif action != "auto":
        automatic = {}  # about whichever version is the candidate (or a pin): the hand wins
    rolled |= {v for v, decision in automatic.items() if decision == "rollback"}
    promoted = [j for j in eligible if automatic.get(j.version) == "promote"]
    stable = promoted[-1] if promoted else next((j for j in reversed(eligible) if was[j.version] == STABLE), None)
    fresh = [
        j
        for j in eligible
        if j.version not in rolled
        and was[j.version] != RETIRED
        and (stable is None or order[j.version] > order[stable.version])
    ]
    candidate = fresh[-1] if fresh else None
    waiting: set[str] = set()
    if action == "promote":
        target = by_version.get(wanted) if wanted else candidate
        if target is not None and target.version not in rolled and target is not stable and not promoted:
            stable, candidate = target, None
    elif action == "rollback":
        target = by_version.get(wanted) if wanted else candidate
        if target is not None and target is candidate:
            rolled.add(target.version)
            candidate = None
        elif target is not None and target is stable:
            rolled.add(target.version)
            older = [j for j in eligible if order[j.version] < order[target.version] and j.version not in rolled]
            stable = older[-1] if older else None
    elif action == "pin" and wanted:
        target = by_version[wanted]
        rolled.discard(target.version)
        waiting = {j.version for j in eligible if order[j.version] > order[target.version] and j.version not in rolled}
        stable, candidate = target, None
    if stable is None and candidate is not None:
        stable, candidate = candidate, None  # the first version of a name takes its traffic at once
    if candidate is not None and candidate.weight >= 1:
        stable, candidate = candidate, None  # weight 100: no canary
    for job in eligible:
        ingress = (decided or {}).get(job.version) or {}
        if job is stable:
            if ingress.get("decision") == "promote" and candidate is None and action == "auto":
                phases[job.version] = (STABLE, f"promoted by the ingress's canary: {ingress.get('reason', '')}")
            else:
                phases[job.version] = (STABLE, _stable_message(action, candidate))
        elif job is candidate:
            phases[job.version] = (CANDIDATE, f"canary: {round(job.weight * 100)} % of {name}'s API keys")
        elif job.version in rolled and ingress.get("decision") == "rollback":
            phases[job.version] = (
                ROLLED_BACK,
                f"rolled back by the ingress's canary: {ingress.get('reason', '')}; never served again unless pinned",
            )
        elif job.version in rolled:
            phases[job.version] = (ROLLED_BACK, "rolled back; never served again unless pinned")
        elif job.version in waiting:
            phases[job.version] = (WAITING, f"held back by rollouts[{name}] pin {wanted}")
        else:
            phases[job.version] = (RETIRED, "superseded by a newer version")
    if stable is None and candidate is None:
        return phases, None, notes
    source = candidate or stable
    assert source is not None
    settings = tuple((rk, source.canary[k]) for k, rk in _CANARY_FIELDS.items() if source.canary.get(k) is not None)
    route = Route(
        name=name,
        stable=stable.as_version() if stable else None,
        candidate=candidate.as_version() if candidate else None,
        weight=candidate.weight if candidate else 0.0,
        # A candidate left standing after the override is one it was not about (an entry naming an older
        # version): the ingress judges it. Rendering the entry's mode here would, e.g., send every key to an
        # unjudged candidate as "promoted by hand".
        mode=action if candidate is None else "auto",
        canary=settings,
    )
    return phases, route, notes


def _with_canary_context(
    route: Route, spec: dict[str, Any], before: dict[tuple[Any, Any], dict[str, Any]], now: str
) -> Route:
    """The split (auto: per request without auth, so one key or none still splits) and when the canary began
    (the candidate's status `since`, so a restarted ingress keeps the deadline)."""
    settings = dict(route.canary)
    split = settings.pop("split", "auto")
    if split == "auto":
        split = "request" if ((spec.get("auth") or {}).get("mode") == "none") else "key"
    settings["split"] = split
    if route.candidate is not None:
        old = before.get((route.name, route.candidate.version)) or {}
        since = str(old.get("since")) if old.get("phase") == CANDIDATE and old.get("since") else now
        settings["started_at"] = _epoch(since)
    return replace(route, canary=tuple(sorted(settings.items())))


def _epoch(rfc3339: str) -> float:
    try:
        return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _automatic(
    decided: dict[str, dict[str, Any]],
    was: dict[str, str | None],
    before: dict[tuple[Any, Any], dict[str, Any]],
    name: str,
) -> dict[str, str]:
    """The ingress's decisions that act now: about a version in force as Candidate, taken after it became
    one (a decision left from an earlier job of the same name never acts on a new one)."""
    out = {}
    for version, decision in decided.items():
        since = str((before.get((name, version)) or {}).get("since") or "")
        acts = decision.get("decision") in {"promote", "rollback"} and str(decision.get("time") or "") >= since
        if was.get(version) == CANDIDATE and acts:
            out[version] = str(decision["decision"])
    return out


def _stable_message(action: str, candidate: Job | None) -> str:
    if action == "pin":
        return "pinned by spec.rollouts"
    if candidate is not None:
        return f"stable; canary {candidate.version} takes {round(candidate.weight * 100)} %"
    return "serving all of the adapter's traffic"


def _entry(
    job: Job, phase: str, message: str, route: Route | None, old: dict[str, Any] | None, now: str
) -> dict[str, Any]:
    weight = None
    if route is not None and phase == STABLE:
        weight = round(1.0 - route.weight, 4)
    elif route is not None and phase == CANDIDATE:
        weight = route.weight
    entry: dict[str, Any] = {
        "name": job.adapter,
        "version": job.version,
        "engineName": job.engine_name,
        "uri": job.uri,
        "phase": phase,
        "since": (old or {}).get("since") if (old or {}).get("phase") == phase else now,
        "message": message + (" (its FineTuneJob is gone; kept by this status)" if job.orphan else ""),
        "rank": job.rank,
        "completed": job.completed or None,
    }
    if weight is not None:
        entry["weight"] = weight
    return {k: v for k, v in entry.items() if v is not None}
