"""The canary's shared state, pure: per (route, stable, candidate) pair the signals of both versions,
the automatic verdict (canary_rule.py), the deadline, and the decision and weight in force.

Single-threaded (the canary actor serializes calls) and clocked by an injectable wall clock, so it is
unit-tested without Ray. `dump_pair` / `restore_pair` are what the actor writes to and reads from the
sink (canary_state.py) so that a restarted actor goes on with the evidence it had.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

from bigmodel_serving.args import AdapterRoute
from bigmodel_serving.canary_rule import ArmStats, Moments, QualityRole, RuleSettings, decide

LATENCY_SAMPLES = 512  # per version: the p50 shown is over the latest this many successful requests
MAX_PAIRS = 1024  # (route, stable, candidate) states kept

Role = Literal["stable", "candidate"]
Decision = Literal["canary", "promoted", "rolled_back", "pinned", "stable"]
DECISIONS: tuple[Decision, ...] = ("canary", "promoted", "rolled_back", "pinned", "stable")
Pair = tuple[str, str | None, str | None]  # (route, stable, candidate)


def rfc3339(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pair_of(route: AdapterRoute) -> Pair:
    return (route.name, route.stable, route.candidate)


@dataclass
class VersionSignals:
    """One version's observations: what the rule needs (`stats`) and the recent latencies shown."""

    version: str
    stats: ArmStats = field(default_factory=ArmStats)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def record(self, error: bool, latency_s: float | None) -> None:
        self.stats.record(error, latency_s)
        if not error and latency_s is not None:
            self.latencies.append(latency_s)

    @property
    def requests(self) -> int:
        return self.stats.errors.n

    @property
    def errors(self) -> int:
        return round(self.stats.errors.total)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p50(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[len(ordered) // 2]

    def summary(self) -> dict[str, Any]:
        quality = self.stats.quality
        return {
            "version": self.version,
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "latency_p50_s": None if (p50 := self.p50()) is None else round(p50, 4),
            "ratings": quality.n,
            "bad_answers": round(quality.total),
        }


@dataclass(frozen=True)
class Verdict:
    decision: Literal["promoted", "rolled_back"]
    reason: str


ROUTE_RULE_FIELDS = {setting.name for setting in fields(RuleSettings)} - {"quality"}
"""The rule's parameters an AdapterRoute carries under the same names (quality is resolved from both)."""


def settings_of(route: AdapterRoute, feedback_enabled: bool) -> RuleSettings:
    """The rule's parameters for a route; quality `auto` is required with feedback on, off without."""
    quality: QualityRole = ("required" if feedback_enabled else "off") if route.quality == "auto" else route.quality
    if quality != "off" and not feedback_enabled:
        quality = "off"  # no ratings can come: judging them would only block promotion
    return RuleSettings(**route.model_dump(include=ROUTE_RULE_FIELDS), quality=quality)


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
    started: float  # wall time the canary began (the route's started_at, else first seen)
    decision: Decision = "canary"
    weight: float = 0.0
    reason: str = ""
    since: float = 0.0  # wall time of the last change of decision or weight
    verdict: Verdict | None = None  # the automatic one; it holds for the pair
    touched: float = 0.0
    changed: bool = True  # observations not yet written to the sink

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
            split = "API keys" if route.split == "key" else "requests"
            reason = (
                f"splitting {split}: the sequential test decides (false rollback rate at most "
                f"{route.false_rollback_rate:g}); undecided at {rfc3339(self.started + route.deadline_s)}: "
                f"{route.on_deadline}"
            )
        if self.decision == "pinned" and decision == "pinned":
            weight, reason = self.weight, self.reason  # pin freezes what was in force
        changed = (decision, weight) != (self.decision, self.weight) or not self.since
        self.decision, self.weight, self.reason = decision, weight, reason
        if changed:
            self.since = wall
        return changed

    def view(self) -> dict[str, Any]:
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
            "since": rfc3339(self.since),
            "started": rfc3339(self.started),
            "signals": {
                "stable": self.stable.summary(),
                "candidate": None if self.candidate is None else self.candidate.summary(),
            },
        }


@dataclass
class CanaryBook:
    """Every route pair's state; single-threaded (the actor serializes calls)."""

    wall: Callable[[], float] = time.time
    feedback_enabled: bool = False
    states: dict[Pair, RouteState] = field(default_factory=dict)
    totals: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (route, version) -> [requests, errors]

    def configure(
        self, routes: Iterable[AdapterRoute], base_model: str, restore: Callable[[Pair], Any] | None = None
    ) -> list[str]:
        """Take the routes one ingress replica runs; returns a log line per changed decision. `restore`
        gives a new pair's saved state (canary_state.py), if any."""
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
                    started=route.started_at or now,
                )
                saved = restore(pair) if restore is not None and route.candidate is not None else None
                if saved is not None:
                    self.restore_pair(state, saved)
                self.states[pair] = state
            state.touched = now
            if route.started_at is not None:
                state.started = route.started_at
            if (state.route != route or not state.since) and state.apply(route, now):
                lines.append(self._line(state))
            if (decided := self.decide(state)) is not None:
                lines.append(decided)
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
        state.changed = True
        total = self.totals.setdefault((pair[0], signals.version), [0, 0])
        total[0] += 1
        total[1] += int(error)
        return self.decide(state)

    def set_quality(self, version: str, rated: int, bad: int) -> None:
        """Ratings of `version`'s answers given during its canaries (from the feedback store)."""
        for state in self.states.values():
            for signals in (state.stable, state.candidate):
                if signals is not None and signals.version == version:
                    signals.stats.quality = Moments(rated, float(bad), float(bad))

    def decide(self, state: RouteState) -> str | None:
        """The rule's verdict once it has one, or the deadline's; a log line when it decided."""
        if state.decision != "canary" or state.candidate is None or state.verdict is not None:
            return None
        route = state.route
        settings = settings_of(route, self.feedback_enabled)
        found = decide(settings, state.candidate.stats, state.stable.stats)
        now = self.wall()
        if found is not None:
            state.verdict = Verdict(found.decision, found.reason)
        elif now >= state.started + route.deadline_s:
            decision: Literal["promoted", "rolled_back"] = (
                "promoted" if route.on_deadline == "promote" else "rolled_back"
            )
            state.verdict = Verdict(
                decision,
                f"undecided {route.deadline_s / 3600:g} h after the canary began (onDeadline {route.on_deadline}): "
                f"{state.candidate.requests} candidate requests, {state.candidate.stats.quality.n} ratings",
            )
        else:
            return None
        state.changed = True
        state.apply(route, now)
        return self._line(state)

    def deciding(self) -> list[RouteState]:
        return [
            s for s in self.states.values() if s.candidate is not None and s.verdict is None and s.decision == "canary"
        ]

    def wants_quality(self) -> list[tuple[str, float]]:
        """(version, since) pairs whose ratings a pending decision needs."""
        out = []
        for state in self.deciding():
            if settings_of(state.route, self.feedback_enabled).quality != "off":
                assert state.candidate is not None
                out += [(state.stable.version, state.started), (state.candidate.version, state.started)]
        return sorted(set(out))

    def snapshot(self) -> dict[str, Any]:
        return {
            "states": [state.view() for state in self.states.values()],
            "totals": [[route, version, counts[0], counts[1]] for (route, version), counts in self.totals.items()],
        }

    @staticmethod
    def dump_pair(state: RouteState) -> dict[str, Any]:
        """What a restarted actor needs to go on: the start, both sides' request signals, the verdict."""
        verdict = state.verdict
        return {
            "route": state.route.name,
            "stable": state.route.stable,
            "candidate": state.route.candidate,
            "started": state.started,
            "stable_stats": state.stable.stats.dump(),
            "candidate_stats": None if state.candidate is None else state.candidate.stats.dump(),
            "verdict": None if verdict is None else {"decision": verdict.decision, "reason": verdict.reason},
        }

    @staticmethod
    def restore_pair(state: RouteState, saved: dict[str, Any]) -> None:
        if (saved.get("route"), saved.get("stable"), saved.get("candidate")) != pair_of(state.route):
            return
        if isinstance(saved.get("started"), int | float):
            state.started = min(state.started, float(saved["started"]))
        state.stable.stats = ArmStats.load(saved.get("stable_stats"))
        if state.candidate is not None:
            state.candidate.stats = ArmStats.load(saved.get("candidate_stats"))
        verdict = saved.get("verdict")
        if isinstance(verdict, dict) and verdict.get("decision") in ("promoted", "rolled_back"):
            state.verdict = Verdict(verdict["decision"], str(verdict.get("reason", "")))
        state.changed = False

    @staticmethod
    def _line(state: RouteState) -> str:
        route = state.route
        return (
            f"bigmodel: route {route.name} (stable {route.stable or 'base model'}, candidate {route.candidate}):"
            f" {state.decision} at weight {state.weight:g}: {state.reason}"
        )
