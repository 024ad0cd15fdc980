"""Canary routes: one name clients call, split between a stable and a candidate adapter, decided automatically.

A route (`IngressConfig.routes`, `AdapterRoute`) is called as `<served_name>:<route>`. The ingress picks
the version per API key: a stable hash of (key name, route, candidate) mapped to [0, 1) goes to the
candidate when it is below the weight in force. So a key keeps its version while the weight holds, and
raising the weight only moves keys from stable to candidate. `body.model` becomes the version's engine
name (`<served_name>:<adapter>`, or the base model when `stable` is null) and the answer's `model` is the
route the client asked for (clients and SDKs that compare it keep working); the `X-BigModel-Model`
response header names the version that answered.

Three parts:

- pure: `key_share`, `VersionSignals`, `judge` (the decision rule) and `CanaryBook` (per route state
  for each (stable, candidate) pair: signals, the automatic verdict, the weight in force), with an
  injectable clock, unit-tested without Ray;
- `CanaryActor`: one detached Ray actor per application holding the `CanaryBook`, shared by all ingress
  replicas (like `quota.py`); it also asks the feedback actor for mean ratings when a route uses them;
- `CanaryRouter`: each ingress replica's side. Choosing a version is a dict look-up and one hash (no
  actor call on the request path). Finished requests are buffered and sent to the actor every
  `SYNC_INTERVAL_S`, in the same call that brings back the decisions, so a verdict reaches every replica
  within about a second. Manual modes (promote, rollback) apply on `reconfigure()` at once, locally.

Requests in flight are never moved: a request keeps the version it started with. A candidate that fails
with a server error before its first byte is retried once on the stable version (the client gets an
answer; the candidate is charged an error), so a broken candidate costs its clients latency, not failures.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from bigmodel_serving.actor_calls import BACKGROUND_TIMEOUT_S, DependencyUnavailableError, call_actor
from bigmodel_serving.args import AdapterRoute, RolloutReportArgs
from bigmodel_serving.rollout_report import Decision as DecisionReport
from bigmodel_serving.rollout_report import RolloutReporter

logger = logging.getLogger("ray.serve")

ACTOR_NAMESPACE = "bigmodel"
SYNC_INTERVAL_S = 0.4  # records out, decisions in, per ingress replica
FIRST_SYNC_TIMEOUT_S = 10.0  # a replica's first request waits this long at most for the shared state
LATENCY_SAMPLES = 512  # per version: the p50 is over the latest this many successful requests
MAX_PAIRS = 1024  # (route, stable, candidate) states kept by the actor
FEEDBACK_TTL_S = 5.0
REPORT_RETRY_S = 30.0  # an undelivered decision report is sent again this often
MODEL_HEADER = "x-bigmodel-model"

Role = Literal["stable", "candidate"]
Decision = Literal["canary", "promoted", "rolled_back", "pinned", "stable"]
DECISIONS: tuple[Decision, ...] = ("canary", "promoted", "rolled_back", "pinned", "stable")
Pair = tuple[str, str | None, str | None]  # (route, stable, candidate)


def actor_name(app_name: str) -> str:
    return f"bigmodel-canary:{app_name}"


def key_share(key: str, route: str, candidate: str) -> float:
    """Where an API key falls in [0, 1) for a route's candidate; below the weight means the candidate."""
    digest = hashlib.blake2b(f"{key}\x00{route}\x00{candidate}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def picks_candidate(key: str, route: str, candidate: str | None, weight: float) -> bool:
    return candidate is not None and weight > 0 and key_share(key, route, candidate) < weight


def _rfc3339(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# pure: signals, the decision rule, the book
# --------------------------------------------------------------------------------------------


@dataclass
class VersionSignals:
    """Requests, server errors and latency (time to the first answer byte) of one version."""

    version: str
    requests: int = 0
    errors: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def record(self, error: bool, latency_s: float | None) -> None:
        self.requests += 1
        if error:
            self.errors += 1
        elif latency_s is not None:
            self.latencies.append(latency_s)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p50(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[len(ordered) // 2]

    def summary(self, feedback_mean: float | None = None) -> dict[str, Any]:
        return {
            "version": self.version,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "latency_p50_s": None if (p50 := self.p50()) is None else round(p50, 4),
            "feedback_mean": feedback_mean,
        }


@dataclass(frozen=True)
class Verdict:
    decision: Literal["promoted", "rolled_back"]
    reason: str


def judge(
    route: AdapterRoute,
    stable: VersionSignals,
    candidate: VersionSignals,
    feedback: tuple[float | None, float | None] = (None, None),
) -> Verdict | None:
    """The automatic decision for a canary, or None while it needs more requests.

    Roll back, once the candidate served `min_requests`, when its error rate exceeds the stable's by more
    than `max_error_rate_increase`, its p50 latency exceeds `max_latency_ratio` times the stable's (both
    need `min_requests // 2` successful samples), or its mean feedback rating is lower by more than
    `min_feedback_delta`. Promote after `window_requests` candidate requests without any of these.
    """
    count = candidate.requests
    if count < route.min_requests:
        return None
    if candidate.error_rate > stable.error_rate + route.max_error_rate_increase:
        return Verdict(
            "rolled_back",
            f"candidate error rate {candidate.error_rate:.1%} > stable {stable.error_rate:.1%}"
            f" + {route.max_error_rate_increase:.1%} after {count} requests",
        )
    needed = max(1, route.min_requests // 2)
    candidate_p50, stable_p50 = candidate.p50(), stable.p50()
    if (
        candidate_p50 is not None
        and stable_p50 is not None
        and len(candidate.latencies) >= needed
        and len(stable.latencies) >= needed
        and candidate_p50 > route.max_latency_ratio * stable_p50
    ):
        return Verdict(
            "rolled_back",
            f"candidate p50 latency {candidate_p50 * 1000:.1f} ms > {route.max_latency_ratio:g} x stable"
            f" {stable_p50 * 1000:.1f} ms after {count} requests",
        )
    stable_mean, candidate_mean = feedback
    delta = route.min_feedback_delta
    if (
        delta is not None
        and stable_mean is not None
        and candidate_mean is not None
        and candidate_mean < stable_mean - delta
    ):
        return Verdict(
            "rolled_back", f"candidate mean rating {candidate_mean:.2f} < stable {stable_mean:.2f} - {delta:g}"
        )
    if count >= route.window_requests:
        return Verdict("promoted", f"{count} candidate requests without regression")
    return None


def manual_decision(route: AdapterRoute, pinned_weight: float) -> tuple[Decision, float, str] | None:
    """(decision, weight, reason) of a route whose mode or shape leaves nothing to decide, else None."""
    if route.candidate is None:
        return "stable", 0.0, "no candidate: every key gets the stable version"
    if route.mode == "promote":
        return "promoted", 1.0, "promoted by hand (mode promote)"
    if route.mode == "rollback":
        return "rolled_back", 0.0, "rolled back by hand (mode rollback)"
    if route.mode == "pin":
        return "pinned", pinned_weight, f"pinned by hand at weight {pinned_weight:g}"
    return None


@dataclass
class RouteState:
    """One (route, stable, candidate) pair: its settings, signals and the decision in force."""

    route: AdapterRoute
    stable: VersionSignals
    candidate: VersionSignals | None
    decision: Decision = "canary"
    weight: float = 0.0
    reason: str = ""
    since: float = 0.0  # wall time of the last change of decision or weight
    verdict: Verdict | None = None  # the automatic one; it holds for the pair
    touched: float = 0.0

    def apply(self, route: AdapterRoute, wall: float) -> bool:
        """Take `route`'s settings; True when the decision or weight changed."""
        self.route = route
        manual = manual_decision(route, pinned_weight=self.weight if self.since else route.weight)
        if manual is not None:
            decision, weight, reason = manual
        elif self.verdict is not None:
            decision, reason = self.verdict.decision, self.verdict.reason
            weight = 1.0 if decision == "promoted" else 0.0
        else:
            decision, weight = "canary", route.weight
            reason = f"splitting keys; deciding after {route.min_requests} candidate requests"
        if self.decision == "pinned" and decision == "pinned":
            weight, reason = self.weight, self.reason  # pin freezes what was in force
        changed = (decision, weight) != (self.decision, self.weight) or not self.since
        self.decision, self.weight, self.reason = decision, weight, reason
        if changed:
            self.since = wall
        return changed

    def view(self, feedback: tuple[float | None, float | None] = (None, None)) -> dict[str, Any]:
        route = self.route
        return {
            "name": route.name,
            "stable": route.stable,
            "candidate": route.candidate,
            "mode": route.mode,
            "configured_weight": route.weight,
            "weight": self.weight,
            "decision": self.decision,
            "reason": self.reason,
            "since": _rfc3339(self.since),
            "signals": {
                "stable": self.stable.summary(feedback[0]),
                "candidate": None if self.candidate is None else self.candidate.summary(feedback[1]),
            },
        }


def pair_of(route: AdapterRoute) -> Pair:
    return (route.name, route.stable, route.candidate)


@dataclass
class CanaryBook:
    """Every route pair's state; single-threaded (the actor serializes calls)."""

    wall: Callable[[], float] = time.time
    states: dict[Pair, RouteState] = field(default_factory=dict)
    totals: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (route, version) -> [requests, errors]
    feedback: dict[str, float | None] = field(default_factory=dict)  # engine model -> mean rating

    def configure(self, routes: Iterable[AdapterRoute], base_model: str) -> list[str]:
        """Take the routes one ingress replica runs; returns a log line per changed decision."""
        lines = []
        now = self.wall()
        for route in routes:
            pair = pair_of(route)
            state = self.states.get(pair)
            if state is None:
                state = RouteState(
                    route=route,
                    stable=VersionSignals(route.stable or base_model),
                    candidate=None if route.candidate is None else VersionSignals(route.candidate),
                )
                self.states[pair] = state
            state.touched = now
            if (state.route != route or not state.since) and state.apply(route, now):
                lines.append(self._line(state))
        self._evict()
        return lines

    def _evict(self) -> None:
        if len(self.states) <= MAX_PAIRS:
            return
        for pair in sorted(self.states, key=lambda pair: self.states[pair].touched)[: len(self.states) - MAX_PAIRS]:
            del self.states[pair]

    def record(self, pair: Pair, role: Role, error: bool, latency_s: float | None) -> str | None:
        """Count one finished request; returns a log line when it triggered an automatic decision."""
        state = self.states.get(pair)
        if state is None:
            return None
        signals = state.stable if role == "stable" else state.candidate
        if signals is None:
            return None
        signals.record(error, latency_s)
        total = self.totals.setdefault((pair[0], signals.version), [0, 0])
        total[0] += 1
        total[1] += int(error)
        return self.decide(state)

    def feedback_of(self, state: RouteState) -> tuple[float | None, float | None]:
        if state.route.min_feedback_delta is None or state.candidate is None:
            return None, None
        base = state.stable.version
        return self.feedback.get(base), self.feedback.get(state.candidate.version)

    def decide(self, state: RouteState) -> str | None:
        if state.decision != "canary" or state.candidate is None or state.verdict is not None:
            return None
        verdict = judge(state.route, state.stable, state.candidate, self.feedback_of(state))
        if verdict is None:
            return None
        state.verdict = verdict
        state.apply(state.route, self.wall())
        return self._line(state)

    def wants_feedback(self) -> list[str]:
        """Versions whose mean rating a pending decision needs."""
        versions = []
        for state in self.states.values():
            if state.route.min_feedback_delta is not None and state.candidate is not None and state.verdict is None:
                versions += [state.stable.version, state.candidate.version]
        return sorted(set(versions))

    def snapshot(self) -> dict[str, Any]:
        return {
            "states": [state.view(self.feedback_of(state)) for state in self.states.values()],
            "totals": [[route, version, counts[0], counts[1]] for (route, version), counts in self.totals.items()],
        }

    @staticmethod
    def _line(state: RouteState) -> str:
        route = state.route
        return (
            f"bigmodel: route {route.name} (stable {route.stable or 'base model'}, candidate {route.candidate}):"
            f" {state.decision} at weight {state.weight:g}: {state.reason}"
        )


# --------------------------------------------------------------------------------------------
# the shared actor
# --------------------------------------------------------------------------------------------


def mean_rating(value: Any) -> float | None:
    """The mean rating from the feedback actor's `scores(model)`: (count, mean), None without ratings."""
    if isinstance(value, list | tuple) and len(value) == 2:
        count, mean = value
        if isinstance(count, int) and count > 0 and isinstance(mean, int | float):
            return float(mean)
    return None


def replica_app_name(default: str) -> str:
    """The Serve application this replica belongs to (actors are named per application)."""
    try:
        from ray import serve

        return str(serve.get_replica_context().app_name)
    except Exception:
        return default


class CanaryActor:
    """The Ray actor holding one application's `CanaryBook` (async: a feedback look-up does not block it)."""

    def __init__(self, app_name: str, base_model: str) -> None:
        self.app_name = app_name
        self.base_model = base_model
        self.book = CanaryBook()
        self._feedback_at = 0.0
        self.reporter: RolloutReporter | None = None
        self._report_to: dict[str, Any] | None = None
        self.unreported: list[DecisionReport] = []
        self._reported_at = 0.0
        self._reporting: asyncio.Task[None] | None = None

    async def sync(
        self, routes: list[dict[str, Any]], records: list[list[Any]], report: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Take one replica's routes and finished requests (and where to report decisions); answer every
        pair's state."""
        self._configure_report(report)
        for line in self.book.configure([AdapterRoute.model_validate(raw) for raw in routes], self.base_model):
            logger.info(line)
        await self._refresh_feedback()
        for route, stable, candidate, role, error, latency in records:
            pair = (route, stable, candidate)
            decided = self.book.record(pair, role, bool(error), latency)
            if decided:
                logger.warning(decided)
                self._queue_report(pair)
        self._send_reports()
        return self.book.snapshot()

    def _configure_report(self, report: dict[str, Any] | None) -> None:
        if report is None or report == self._report_to:
            return
        target = RolloutReportArgs.model_validate(report)
        self._report_to = report
        self.reporter = RolloutReporter(target.namespace, target.bigmodel)

    def _queue_report(self, pair: Pair) -> None:
        """An automatic verdict goes to Kubernetes (the operator makes it durable); manual ones came from there."""
        state = self.book.states.get(pair)
        if self.reporter is None or state is None or state.verdict is None or state.route.candidate is None:
            return
        verdict = state.verdict
        decision = self.reporter.decision(
            state.route.name, state.route.stable, state.route.candidate, verdict.decision, verdict.reason
        )
        if decision is not None:
            self.unreported.append(decision)
            self._reported_at = 0.0

    def _send_reports(self) -> None:
        """Off the event loop, one batch at a time; what fails is retried every REPORT_RETRY_S."""
        if not self.unreported or self.reporter is None:
            return
        if self._reporting is not None and not self._reporting.done():
            return
        if time.monotonic() - self._reported_at < REPORT_RETRY_S and self._reported_at:
            return
        self._reported_at = time.monotonic()
        self._reporting = asyncio.get_running_loop().create_task(self._deliver(self.reporter))

    async def _deliver(self, reporter: RolloutReporter) -> None:
        batch, self.unreported = self.unreported, []
        for decision in batch:
            if not await asyncio.to_thread(reporter.report, decision):
                self.unreported.append(decision)

    async def _refresh_feedback(self) -> None:
        versions = self.book.wants_feedback()
        if not versions or time.monotonic() - self._feedback_at < FEEDBACK_TTL_S:
            return
        self._feedback_at = time.monotonic()
        import ray

        from bigmodel_serving import feedback

        try:  # the feedback store's actor answers scores(model) -> (count, mean rating)
            store = ray.get_actor(feedback.actor_name(self.app_name), namespace=feedback.ACTOR_NAMESPACE)
        except ValueError:
            return  # no feedback store in this application
        for version in versions:
            model = version if version == self.base_model else f"{self.base_model}:{version}"
            try:
                scores = await call_actor("feedback store", store.scores.remote(model), BACKGROUND_TIMEOUT_S)
                self.book.feedback[version] = mean_rating(scores)
            except Exception as error:  # ratings are optional: decide on the other signals
                logger.warning("bigmodel: feedback scores of %s unavailable: %r", model, error)


def canary_actor(app_name: str, base_model: str) -> Any:
    """The application's canary actor, created on first use (detached: it outlives any one ingress replica)."""
    import ray

    remote_cls = cast(Any, ray.remote)(num_cpus=0, max_restarts=-1)(CanaryActor)
    return remote_cls.options(
        name=actor_name(app_name), namespace=ACTOR_NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(app_name, base_model)


# --------------------------------------------------------------------------------------------
# the ingress replica's side
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """The version one request goes to."""

    pair: Pair
    role: Role
    requested: str  # "<base>:<route>", what the client called
    engine_model: str  # "<base>:<adapter>" or the base model
    fallback: Choice | None = None  # stable, when the candidate fails before answering


@dataclass(frozen=True)
class Opened:
    """The version that answered a request: its answer (a response) and its time to the answer's first byte."""

    answer: Any
    choice: Choice
    latency_s: float


class CanaryRouter:
    """One ingress replica's routes: picks versions, buffers signals, syncs with the actor."""

    def __init__(
        self,
        app_name: str,
        base_model: str,
        *,
        actor_factory: Callable[[str, str], Any] = canary_actor,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app_name = app_name
        self.base_model = base_model
        self._actor_factory = actor_factory
        self._actor: Any = None
        self.clock = clock
        self.routes: dict[str, AdapterRoute] = {}  # by "<base>:<route>"
        self.weights: dict[str, float] = {}  # by route name: the weight in force here
        self._decisions: dict[str, tuple[str, float, str, str]] = {}  # (decision, weight, reason, since) by route
        self.states: dict[Pair, dict[str, Any]] = {}  # the actor's view of each pair
        self.totals: list[list[Any]] = []
        self._pending: list[list[Any]] = []
        self._syncer: asyncio.Task[None] | None = None
        self.report_to: dict[str, Any] | None = None  # RolloutReportArgs, for the actor

    # ---- configuration ----

    def configure(self, routes: Iterable[AdapterRoute], report: RolloutReportArgs | None = None) -> None:
        self.routes = {f"{self.base_model}:{route.name}": route for route in routes}
        self.report_to = None if report is None else report.model_dump()
        self._reweigh()

    def model_ids(self) -> list[str]:
        return list(self.routes)

    def _reweigh(self) -> None:
        """The weight in force per route: the shared decision when it is for this config, else the local one."""
        weights = {}
        for route in self.routes.values():
            known = self.states.get(pair_of(route))
            if known is not None and known["mode"] == route.mode and known["configured_weight"] == route.weight:
                decision, weight, reason = str(known["decision"]), float(known["weight"]), str(known["reason"])
                shared_since: str | None = str(known["since"])
            else:
                manual = manual_decision(route, self.weights.get(route.name, route.weight))
                decision, weight, reason = manual or ("canary", route.weight, "splitting keys")
                shared_since = None
            weights[route.name] = weight
            previous = self._decisions.get(route.name)
            if previous is None or previous[:2] != (decision, weight):
                logger.info("bigmodel: route %s: %s, candidate weight %g: %s", route.name, decision, weight, reason)
                previous = None
            since = shared_since or (previous[3] if previous is not None else _rfc3339(time.time()))
            self._decisions[route.name] = (decision, weight, reason, since)
        self.weights = weights

    # ---- the request path ----

    def choose(self, model: str, key: str) -> Choice | None:
        """The version `key` gets for `model`, or None when `model` is not a route."""
        route = self.routes.get(model)
        if route is None:
            return None
        pair = pair_of(route)
        stable_model = self.base_model if route.stable is None else f"{self.base_model}:{route.stable}"
        stable = Choice(pair, "stable", model, stable_model)
        if not picks_candidate(key, route.name, route.candidate, self.weights.get(route.name, 0.0)):
            return stable
        return Choice(pair, "candidate", model, f"{self.base_model}:{route.candidate}", fallback=stable)

    def record(self, choice: Choice, error: bool, latency_s: float | None) -> None:
        self._pending.append([*choice.pair, choice.role, error, latency_s])

    async def open(
        self,
        choice: Choice,
        open_answer: Callable[[str], Awaitable[Any]],
        status_of: Callable[[BaseException], int],
    ) -> Opened:
        """`open_answer(engine_model)` for `choice`; a candidate failing with a server error before its first
        byte is charged the error and answered from stable. Call `finish` when the answer is over."""
        await self.ensure_syncing()
        attempt = choice
        while True:
            started = self.clock()
            try:
                answer = await open_answer(attempt.engine_model)
            except Exception as error:
                failed = status_of(error) >= 500
                self.record(attempt, failed, None)
                if failed and attempt.fallback is not None:
                    logger.warning("bigmodel: %s failed (%r); answering from stable", attempt.engine_model, error)
                    attempt = attempt.fallback
                    continue
                raise
            return Opened(answer, attempt, self.clock() - started)

    def finish(self, opened: Opened, failed: bool) -> None:
        """Count an answer `open` started: its latency, or a server error when it failed midway."""
        self.record(opened.choice, failed, None if failed else opened.latency_s)

    # ---- the shared state ----

    def _get_actor(self) -> Any:
        if self._actor is None:
            self._actor = self._actor_factory(replica_app_name(self.app_name), self.base_model)
        return self._actor

    async def ensure_syncing(self) -> None:
        """Start the background sync on first use (the first call waits for one round trip)."""
        if self._syncer is not None and not self._syncer.done():
            return
        first = self._syncer is None
        self._syncer = asyncio.get_running_loop().create_task(self._sync_forever())
        if first:
            try:
                await asyncio.wait_for(self.sync(), FIRST_SYNC_TIMEOUT_S)
            except Exception as error:  # never fail or hold a request for it: route by the local view
                logger.warning("bigmodel: canary sync failed: %r", error)

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the actor restarts; the replica keeps routing by what it knows
                logger.warning("bigmodel: canary sync failed: %r", error)

    async def sync(self) -> None:
        if not self.routes and not self._pending:
            return
        records, self._pending = self._pending, []
        routes = [route.model_dump() for route in self.routes.values()]
        try:
            pending = self._get_actor().sync.remote(routes, records, self.report_to)
            snapshot = await call_actor("canary store", pending, BACKGROUND_TIMEOUT_S)
        except DependencyUnavailableError:
            self._pending = records + self._pending  # try again next time
            self._actor = None  # look it up again: a detached actor killed for good is created anew
            raise
        self.apply_snapshot(snapshot)

    def apply_snapshot(self, snapshot: Mapping[str, Any]) -> None:
        self.states = {(state["name"], state["stable"], state["candidate"]): state for state in snapshot["states"]}
        self.totals = list(snapshot["totals"])
        self._reweigh()

    async def view(self) -> list[dict[str, Any]]:
        """`GET /v1/routes`: this replica's routes with the shared state of each."""
        await self.ensure_syncing()
        out = []
        for model, route in self.routes.items():
            state = self.states.get(pair_of(route)) or {}
            decision, weight, reason, since = self._decisions[route.name]
            entry: dict[str, Any] = {"id": model, "object": "route", "name": route.name}
            entry.update(stable=route.stable, candidate=route.candidate, mode=route.mode)
            entry.update(configured_weight=route.weight, weight=weight, decision=decision, reason=reason, since=since)
            entry["signals"] = state.get("signals", {"stable": None, "candidate": None})
            out.append(entry)
        return out

    async def metrics_text(self) -> str:
        """`bigmodel_route_*` families for /metrics (counts from every ingress replica, via the actor)."""
        if not self.routes and not self.totals:
            return ""
        await self.ensure_syncing()
        return self.render_metrics()

    def render_metrics(self) -> str:
        requests = []
        errors = []
        for route, version, count, failed in sorted(self.totals):
            labels = f'route="{_escape(route)}",version="{_escape(version)}"'
            requests.append(f"bigmodel_route_requests_total{{{labels}}} {count}")
            errors.append(f"bigmodel_route_errors_total{{{labels}}} {failed}")
        weights, decisions = [], []
        for route in sorted(self.routes.values(), key=lambda route: route.name):
            name = _escape(route.name)
            weights.append(f'bigmodel_route_candidate_weight{{route="{name}"}} {self.weights.get(route.name, 0.0):g}')
            state = self.states.get(pair_of(route)) or {}
            for decision in DECISIONS:
                value = 1 if state.get("decision") == decision else 0
                decisions.append(f'bigmodel_route_decision{{route="{name}",decision="{decision}"}} {value}')
        lines = [
            "# HELP bigmodel_route_requests_total Requests answered through a route, by route and version.",
            "# TYPE bigmodel_route_requests_total counter",
            *requests,
            "# HELP bigmodel_route_errors_total Server errors of a route's version (client errors not counted).",
            "# TYPE bigmodel_route_errors_total counter",
            *errors,
            "# HELP bigmodel_route_candidate_weight The candidate's share of API keys in force.",
            "# TYPE bigmodel_route_candidate_weight gauge",
            *weights,
            "# HELP bigmodel_route_decision The route's decision (1 for the one in force).",
            "# TYPE bigmodel_route_decision gauge",
            *decisions,
        ]
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
