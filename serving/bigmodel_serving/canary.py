"""Canary routes: one name clients call, split between a stable and a candidate adapter, decided automatically.

A route (`IngressConfig.routes`, `AdapterRoute`) is called as `<served_name>:<route>`. With `split: key`
the ingress picks the version per API key: a stable hash of (key name, route, candidate) mapped to
[0, 1) goes to the candidate when it is below the weight in force, so a key keeps its version while the
weight holds; with `split: request` every request is drawn afresh (one key, or no auth). `body.model`
becomes the version's engine name (`<served_name>:<adapter>`, or the base model when `stable` is null)
and the answer's `model` is the route the client asked for; the `X-BigModel-Model` response header
names the version that answered.

Four parts:

- canary_rule.py (pure): the sequential test that decides, with its error rates;
- canary_book.py (pure): per (route, stable, candidate) pair the signals, the verdict, the deadline and
  the weight in force;
- `CanaryActor` here: one detached Ray actor per application holding the book, shared by all ingress
  replicas (like `quota.py`); it asks the feedback store for the ratings, writes the evidence to the
  sink (canary_state.py) and reports decisions to Kubernetes (rollout_report.py);
- `CanaryRouter` here: each ingress replica's side. Choosing a version is a dict look-up and one hash (no
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
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from bigmodel_serving.actor_calls import BACKGROUND_TIMEOUT_S, DependencyUnavailableError, call_actor
from bigmodel_serving.args import AdapterRoute, FeedbackArgs, RolloutReportArgs
from bigmodel_serving.canary_book import (
    DECISIONS,
    CanaryBook,
    Decision,
    Pair,
    Role,
    manual_decision,
    pair_of,
    rfc3339,
)
from bigmodel_serving.canary_state import SAVE_INTERVAL_S, CanaryStateStore, open_state_store
from bigmodel_serving.rollout_report import Decision as DecisionReport
from bigmodel_serving.rollout_report import RolloutReporter

logger = logging.getLogger("ray.serve")

ACTOR_NAMESPACE = "bigmodel"
SYNC_INTERVAL_S = 0.4  # records out, decisions in, per ingress replica
FIRST_SYNC_TIMEOUT_S = 10.0  # a replica's first request waits this long at most for the shared state
FEEDBACK_TTL_S = 5.0
REPORT_RETRY_S = 30.0  # an undelivered decision report is sent again this often
MODEL_HEADER = "x-bigmodel-model"

__all__ = ["DECISIONS", "MODEL_HEADER", "CanaryActor", "CanaryRouter", "Choice", "Decision", "key_share"]


def actor_name(app_name: str) -> str:
    return f"bigmodel-canary:{app_name}"


def key_share(key: str, route: str, candidate: str) -> float:
    """Where an API key falls in [0, 1) for a route's candidate; below the weight means the candidate."""
    digest = hashlib.blake2b(f"{key}\x00{route}\x00{candidate}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def picks_candidate(key: str, route: str, candidate: str | None, weight: float) -> bool:
    return candidate is not None and weight > 0 and key_share(key, route, candidate) < weight


# --------------------------------------------------------------------------------------------
# the shared actor
# --------------------------------------------------------------------------------------------


def quality_counts(value: Any) -> tuple[int, int] | None:
    """(rated, bad) from the feedback store's `quality(model, since)`, None when it is not that."""
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        rated, bad = value
        if 0 <= bad <= rated:
            return int(rated), int(bad)
    return None


def replica_app_name(default: str) -> str:
    """The Serve application this replica belongs to (actors are named per application)."""
    try:
        from ray import serve

        return str(serve.get_replica_context().app_name)
    except Exception:
        return default


class CanaryActor:
    """The Ray actor holding one application's `CanaryBook` (async: a look-up or a write does not block it)."""

    def __init__(self, app_name: str, base_model: str) -> None:
        self.app_name = app_name
        self.base_model = base_model
        self.book = CanaryBook()
        self._feedback_at = 0.0
        self._feedback_to: dict[str, Any] | None = None
        self.state_store: CanaryStateStore | None = None
        self._saved_at = 0.0
        self._saving: asyncio.Task[None] | None = None
        self.reporter: RolloutReporter | None = None
        self._report_to: dict[str, Any] | None = None
        self.unreported: list[DecisionReport] = []
        self._reported_at = 0.0
        self._reporting: asyncio.Task[None] | None = None

    async def sync(
        self,
        routes: list[dict[str, Any]],
        records: list[list[Any]],
        report: dict[str, Any] | None = None,
        feedback: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Take one replica's routes and finished requests (where to report decisions, the feedback
        settings: the sink keeps the evidence); answer every pair's state."""
        self._configure_report(report)
        self._configure_feedback(feedback)
        parsed = [AdapterRoute.model_validate(raw) for raw in routes]
        saved = await self._load_new(parsed)
        for line in self.book.configure(parsed, self.base_model, restore=saved.get):
            logger.info(line)
        await self._refresh_quality()
        for route, stable, candidate, role, error, latency in records:
            pair = (route, stable, candidate)
            decided = self.book.record(pair, role, bool(error), latency)
            if decided:
                logger.warning(decided)
                self._queue_report(pair)
        for state in self.book.deciding():  # the deadline, and ratings that arrived meanwhile
            decided = self.book.decide(state)
            if decided:
                logger.warning(decided)
                self._queue_report(pair_of(state.route))
        self._send_reports()
        self._save_states()
        return self.book.snapshot()

    def _configure_feedback(self, feedback: dict[str, Any] | None) -> None:
        if feedback == self._feedback_to:
            return
        self._feedback_to = feedback
        args = None if feedback is None else FeedbackArgs.model_validate(feedback)
        self.book.feedback_enabled = bool(args and args.enabled)
        try:
            self.state_store = open_state_store(args)
        except Exception as error:  # the evidence then lives in memory only
            logger.warning("bigmodel: canary evidence cannot be kept on the sink: %r", error)
            self.state_store = None

    async def _load_new(self, routes: list[AdapterRoute]) -> dict[Pair, Any]:
        """The saved evidence of canaries this actor does not hold yet (after a restart)."""
        store = self.state_store
        if store is None:
            return {}
        found: dict[Pair, Any] = {}
        for route in routes:
            pair = pair_of(route)
            if route.candidate is None or pair in self.book.states:
                continue
            try:
                found[pair] = await asyncio.to_thread(store.load, route.name, route.candidate)
            except Exception as error:
                logger.warning("bigmodel: canary state of %s unreadable: %r", pair, error)
        return found

    def _save_states(self, force: bool = False) -> None:
        """Write changed evidence off the event loop, at most every SAVE_INTERVAL_S (a decision at once)."""
        store = self.state_store
        if store is None or (self._saving is not None and not self._saving.done()):
            return
        changed = [s for s in self.book.states.values() if s.changed and s.route.candidate is not None]
        if not changed:
            return
        decided = any(s.verdict is not None for s in changed)
        if not decided and time.monotonic() - self._saved_at < SAVE_INTERVAL_S:
            return
        self._saved_at = time.monotonic()
        batch = [(s.route.name, str(s.route.candidate), CanaryBook.dump_pair(s)) for s in changed]
        for state in changed:
            state.changed = False
        self._saving = asyncio.get_running_loop().create_task(self._write(store, batch))

    async def _write(self, store: CanaryStateStore, batch: list[tuple[str, str, dict[str, Any]]]) -> None:
        for route, candidate, state in batch:
            try:
                await asyncio.to_thread(store.save, route, candidate, state)
            except Exception as error:  # kept in memory; written again with the next change
                logger.warning("bigmodel: canary state of %s not written to %s: %r", route, store.location, error)

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

    async def _refresh_quality(self) -> None:
        """Ratings of the versions on trial, counted by the feedback store since each canary began."""
        wanted = self.book.wants_quality()
        if not wanted or time.monotonic() - self._feedback_at < FEEDBACK_TTL_S:
            return
        self._feedback_at = time.monotonic()
        import ray

        from bigmodel_serving import feedback

        try:  # the feedback store's actor answers quality(model, since) -> (rated, bad)
            store = ray.get_actor(feedback.actor_name(self.app_name), namespace=feedback.ACTOR_NAMESPACE)
        except ValueError:
            return  # no feedback store in this application
        for version, since in wanted:
            model = version if version == self.base_model else f"{self.base_model}:{version}"
            try:
                pending: Any = store.quality.remote(model, since)
                counts = quality_counts(await call_actor("feedback store", pending, BACKGROUND_TIMEOUT_S))
            except Exception as error:  # decide on what is known; ask again at the next refresh
                logger.warning("bigmodel: ratings of %s unavailable: %r", model, error)
                continue
            if counts is not None:
                self.book.set_quality(version, *counts)


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
        self.feedback: dict[str, Any] | None = None  # FeedbackArgs, for the actor (ratings, the sink)
        self.draw: Callable[[], float] = random.random  # the per-request split

    # ---- configuration ----

    def configure(
        self,
        routes: Iterable[AdapterRoute],
        report: RolloutReportArgs | None = None,
        feedback: FeedbackArgs | None = None,
    ) -> None:
        self.routes = {f"{self.base_model}:{route.name}": route for route in routes}
        self.report_to = None if report is None else report.model_dump()
        self.feedback = None if feedback is None or not feedback.enabled else feedback.model_dump()
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
            since = shared_since or (previous[3] if previous is not None else rfc3339(time.time()))
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
        weight = self.weights.get(route.name, 0.0)
        if route.split == "request":
            if route.candidate is None or weight <= 0 or self.draw() >= weight:
                return stable
        elif not picks_candidate(key, route.name, route.candidate, weight):
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
            pending = self._get_actor().sync.remote(routes, records, self.report_to, self.feedback)
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
            entry["started"] = state.get("started")
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
