"""Usage of a BigModel for its cost: tokens by key and by model, and the seconds it was busy.

- `BusyClock` (each ingress replica): the wall-clock intervals during which at least one generation
  request was in flight here; `take()` hands over what passed since the last call (an open interval up
  to now), sent with the quota flush every second.
- `UsageLedger` (the quota actor, one per application): the union of those intervals over all ingress
  replicas (`busySeconds`: the model was serving someone), tokens and requests by model (the base model,
  `<model>:<adapter>`), and `report()`, the `status.usage` block the operator turns into cost
  (bigmodel_operator.status.cost_accounting). Tokens by key come from the quota book itself.
- `UsageReporter`: sends that block to the BigModel's status every REPORT_EVERY_S from a thread of the
  actor (the same credentials and Role as rollout_report.py); the first report of an actor clears the
  previous one, whose counters belonged to an actor that is gone (the operator sees `since` move).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bigmodel_serving.startup_report import StatusReporter, stamp

REPORT_EVERY_S = 30.0
MAX_NAMED = 256  # keys or models reported by name; the rest are summed under "other"

Interval = tuple[float, float]


@dataclass
class BusyClock:
    """Wall-clock intervals with at least one request in flight (single event loop: no lock)."""

    wall: Callable[[], float] = time.time
    in_flight: int = 0
    _open_since: float | None = None
    _closed: list[Interval] = field(default_factory=list)

    def enter(self) -> None:
        if self.in_flight == 0:
            self._open_since = self.wall()
        self.in_flight += 1

    def exit(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        if self.in_flight == 0 and self._open_since is not None:
            self._closed.append((self._open_since, self.wall()))
            self._open_since = None

    def take(self) -> list[Interval]:
        """The intervals since the last call; a running one is cut at now and continues from there."""
        out, self._closed = self._closed, []
        if self._open_since is not None:
            now = self.wall()
            out.append((self._open_since, now))
            self._open_since = now
        return [(start, end) for start, end in out if end > start]


@dataclass
class BusyUnion:
    """Seconds covered by at least one interval, over intervals that arrive roughly in time order.

    A watermark keeps what is counted: each interval adds only its part after the latest end seen, so
    overlapping intervals from several ingress replicas count once. An interval that arrives after a
    later one (a replica's flush a second late) adds only its part beyond the watermark, so the union
    may undercount by that overlap, never overcount."""

    seconds: float = 0.0
    watermark: float = 0.0

    def add(self, intervals: list[Interval]) -> None:
        for start, end in sorted(intervals):
            begin = max(start, self.watermark)
            if end > begin:
                self.seconds += end - begin
                self.watermark = end


@dataclass
class _Counts:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, requests: int, prompt: int, completion: int) -> None:
        self.requests += max(0, requests)
        self.prompt_tokens += max(0, prompt)
        self.completion_tokens += max(0, completion)

    def wire(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
        }


def _bounded(counts: dict[str, _Counts]) -> dict[str, dict[str, int]]:
    """At most MAX_NAMED names (the busiest), the rest summed as `other`."""
    ranked = sorted(counts.items(), key=lambda item: -(item[1].prompt_tokens + item[1].completion_tokens))
    out = {name: c.wire() for name, c in ranked[:MAX_NAMED]}
    if len(ranked) > MAX_NAMED:
        other = _Counts()
        for _, c in ranked[MAX_NAMED:]:
            other.add(c.requests, c.prompt_tokens, c.completion_tokens)
        out["other"] = other.wire()
    return out


@dataclass
class UsageLedger:
    """The application's usage since the actor started (see the module doc)."""

    wall: Callable[[], float] = time.time
    since: float = field(default_factory=time.time)
    busy: BusyUnion = field(default_factory=BusyUnion)
    models: dict[str, _Counts] = field(default_factory=dict)

    def add_models(self, usage: dict[str, dict[str, Any]]) -> None:
        for model, counts in usage.items():
            self.models.setdefault(model, _Counts()).add(
                sum(counts["responses"].values()), counts["prompt_tokens"], counts["completion_tokens"]
            )

    def report(self, keys: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """`status.usage`: totals, by key (the quota book's per-key counters), by model, busy seconds."""
        by_key = {
            key: _Counts(sum(c["responses"].values()), c["prompt_tokens"], c["completion_tokens"])
            for key, c in keys.items()
        }
        totals = _Counts()
        for c in by_key.values():
            totals.add(c.requests, c.prompt_tokens, c.completion_tokens)
        return {
            "since": stamp(self.since),
            "reportedAt": stamp(self.wall()),
            **totals.wire(),
            "busySeconds": round(self.busy.seconds, 3),
            "byKey": _bounded(by_key),
            "byModel": _bounded(self.models),
        }


class UsageReporter:
    """Every REPORT_EVERY_S, `report()` into the BigModel's `status.usage` when it changed (a thread)."""

    def __init__(self, namespace: str, bigmodel: str, report: Callable[[], dict[str, Any]]) -> None:
        self.status = StatusReporter(namespace, bigmodel, "usage", None)
        self.report = report
        self._stop = threading.Event()
        self._last: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, name="bigmodel-usage-report", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.status.send(None)  # the last actor's counters go (merge patches would mix theirs with ours)
        while not self._stop.wait(REPORT_EVERY_S):
            self.send_now()

    def send_now(self) -> None:
        current = self.report()
        comparable = {k: v for k, v in current.items() if k != "reportedAt"}
        if comparable != self._last:
            self._last = comparable
            self.status.submit(current)

    def stop(self) -> None:
        self._stop.set()
