"""Run reconciles per object: serialized per key, coalesced while busy, bounded in number, retried with backoff.

kopf's on.event handlers fire for every watch event; many arrive in bursts (our own status write,
KubeRay's updates). Funnelling them through this runner means at most one reconcile per object runs
at a time, a burst collapses into one follow-up run, and at most `concurrency` reconciles run at once
(the rest wait their turn, still coalescing).

Two kinds of "again later":
- a failure is retried after 1, 2, 4 … 60 s (with up to 20 % jitter). Watch events and resyncs do not
  cut that wait short while the object's generation stays the same (a status update from KubeRay
  must not turn a backoff into a hot loop); a new generation (the user changed the spec) runs at once.
- `RetryLater` is not a failure: the object waits for something the cluster will do by itself
  (garbage collection of an earlier object's children). It runs again after 1, 2, 4 … 30 s, and any
  event runs it sooner (the old child's deletion is one).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
MAX_WAIT = 30.0
DEFAULT_CONCURRENCY = 16
Work = Callable[[], Awaitable[None]]


class RetryLaterError(Exception):
    """Raised by a reconcile that waits for the cluster (its status already says why): run again soon."""


def backoff_delay(attempt: int, cap: float, jitter: float = 0.2) -> float:
    """1, 2, 4 … `cap` seconds for attempt 1, 2, 3 …, stretched by up to `jitter` (so that a thousand objects
    failing together do not retry together)."""
    return min(cap, 2.0 ** (attempt - 1)) * (1 + random.uniform(0, jitter))


@dataclass
class _Backoff:
    generation: object
    attempts: int
    not_before: float  # loop.time()


class KeyedRunner:
    """Serialize, coalesce and bound async work per key."""

    def __init__(self, name: str, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.name = name
        self.concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None
        self._busy: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._work: dict[Hashable, Work] = {}
        self._generation: dict[Hashable, object] = {}
        self._failures: dict[Hashable, _Backoff] = {}
        self._waits: dict[Hashable, int] = {}
        self._wait_due: dict[Hashable, float] = {}  # loop.time() of the pending wait's timer
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.running = 0
        self.idle = asyncio.Event()  # set while no reconcile runs
        self.idle.set()

    def trigger(self, key: Hashable, work: Work, generation: object = None) -> None:
        """Ask for `work` to run for `key` soon: now, right after the run in progress, or, while a failure
        of the same generation backs off, when that backoff ends."""
        loop = asyncio.get_running_loop()
        self._work[key] = work
        if self._generation.get(key, generation) != generation:
            self._failures.pop(key, None)  # a new spec gets a fresh try
        self._generation[key] = generation
        failed = self._failures.get(key)
        if failed is not None and loop.time() < failed.not_before and key in self._timers:
            return  # the backoff's timer runs it
        self._start(key)

    def _start(self, key: Hashable) -> None:
        if key in self._busy:
            self._dirty.add(key)
            return
        if timer := self._timers.pop(key, None):
            timer.cancel()
        self._busy.add(key)
        task = asyncio.get_running_loop().create_task(self._run(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        if key in self._work:
            self._start(key)

    def _later(self, key: Hashable, delay: float) -> None:
        if timer := self._timers.pop(key, None):
            timer.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key)

    async def _run(self, key: Hashable) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        try:
            while True:
                self._dirty.discard(key)
                work = self._work.get(key)
                if work is None:  # forgotten meanwhile
                    return
                generation = self._generation.get(key)
                try:
                    async with self._slots:
                        self.running += 1
                        self.idle.clear()
                        try:
                            await work()
                        finally:
                            self.running -= 1
                            if not self.running:
                                self.idle.set()
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    if key in self._work:  # not forgotten while it ran
                        self._again(key, error, generation)
                    if not isinstance(error, RetryLaterError) and self._generation.get(key) == generation:
                        self._dirty.discard(key)  # a failure waits for its backoff, whatever arrived meanwhile
                        return
                else:
                    self._failures.pop(key, None)
                    self._waits.pop(key, None)
                    self._wait_due.pop(key, None)
                if key not in self._dirty:
                    return
        finally:
            self._busy.discard(key)

    def _again(self, key: Hashable, error: Exception, generation: object) -> None:
        """Schedule the next run after a failure (backoff) or a wait."""
        loop = asyncio.get_running_loop()
        if isinstance(error, RetryLaterError):
            self._failures.pop(key, None)
            due = self._wait_due.get(key)
            if due is not None and due > loop.time():  # an event ran it before its timer: keep that timer's time
                self._later(key, due - loop.time())
                return
            count = self._waits[key] = self._waits.get(key, 0) + 1
            delay = backoff_delay(count, MAX_WAIT)
            self._wait_due[key] = loop.time() + delay
            log.info("%s %s waits (%d), again in %.1fs: %s", self.name, key, count, delay, error)
        else:
            failed = self._failures.get(key)
            count = (failed.attempts if failed else 0) + 1
            delay = backoff_delay(count, MAX_BACKOFF)
            self._failures[key] = _Backoff(generation, count, loop.time() + delay)
            log.warning("%s %s failed (attempt %d), retrying in %.1fs: %s", self.name, key, count, delay, error)
        self._later(key, delay)

    def forget(self, key: Hashable) -> None:
        """Drop every trace of a deleted object: pending retry, backoff, generation, work."""
        if timer := self._timers.pop(key, None):
            timer.cancel()
        for table in (self._failures, self._waits, self._wait_due, self._work, self._generation):
            table.pop(key, None)
        self._dirty.discard(key)

    def backing_off(self) -> int:
        """Objects whose last run failed and whose retry is pending."""
        return len(self._failures)

    def is_waiting(self, key: Hashable) -> bool:
        """Whether `key`'s last run waits for the cluster (RetryLaterError): any event runs it sooner."""
        return key in self._waits

    def waiting(self) -> int:
        """Objects waiting for the cluster (RetryLaterError)."""
        return len(self._waits)

    def tracked(self) -> int:
        """Keys with any state here (for the leak test: 0 once every object is gone)."""
        tables = (self._work, self._timers, self._failures, self._waits, self._wait_due, self._generation)
        return sum(len(table) for table in tables)

    async def drain(self) -> None:
        """Wait for every run in progress (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
