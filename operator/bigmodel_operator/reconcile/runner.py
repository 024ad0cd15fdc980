"""Run reconciles per object: serialized per key, coalesced while busy, retried with backoff.

kopf's on.event handlers fire for every watch event; many arrive in bursts (our own status write,
KubeRay's updates). Funnelling them through this runner means at most one reconcile per object runs
at a time, a burst collapses into one follow-up run, and a failure is retried after 1, 2, 4 … 60 s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0


class KeyedRunner:
    """Serialize and coalesce async work per key."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._busy: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._retry: dict[Hashable, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def trigger(self, key: Hashable, work: Callable[[], Awaitable[None]]) -> None:
        """Ask for `work` to run for `key` soon (now, or right after the run in progress)."""
        if key in self._busy:
            self._dirty.add(key)
            return
        handle = self._retry.pop(key, None)
        if handle:
            handle.cancel()
        self._busy.add(key)
        task = asyncio.get_running_loop().create_task(self._run(key, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: Hashable, work: Callable[[], Awaitable[None]]) -> None:
        try:
            while True:
                self._dirty.discard(key)
                try:
                    await work()
                    self._failures.pop(key, None)
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    count = self._failures.get(key, 0) + 1
                    self._failures[key] = count
                    delay = min(MAX_BACKOFF, 2.0 ** (count - 1))
                    log.warning("%s %s failed (attempt %d), retrying in %.0fs: %s", self.name, key, count, delay, error)
                    loop = asyncio.get_running_loop()
                    self._retry[key] = loop.call_later(delay, self.trigger, key, work)
                    self._dirty.discard(key)
                    return
                if key not in self._dirty:
                    return
        finally:
            self._busy.discard(key)

    def forget(self, key: Hashable) -> None:
        """Drop retry state of a deleted object."""
        handle = self._retry.pop(key, None)
        if handle:
            handle.cancel()
        self._failures.pop(key, None)

    async def drain(self) -> None:
        """Wait for every run in progress (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
