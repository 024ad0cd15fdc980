"""Bounded admission: at most `max_ongoing` requests generate, at most `max_queued` wait, the rest get 429.

Rejection is immediate (no waiting for a slot), so an overloaded replica answers in microseconds
with `Retry-After`, instead of letting clients pile up until they time out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bigmodel_serving.errors import overloaded
from bigmodel_serving.metrics import ServingMetrics

RETRY_AFTER_S = 1


class AdmissionGate:
    """A semaphore with a bounded waiting line; `slot()` raises a 429 `APIError` when both are full."""

    def __init__(self, max_ongoing: int, max_queued: int, metrics: ServingMetrics | None = None) -> None:
        self.max_ongoing = max_ongoing
        self.max_queued = max_queued
        self.ongoing = 0
        self.waiting = 0
        self._semaphore = asyncio.Semaphore(max_ongoing)
        self._metrics = metrics

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.ongoing.set(self.ongoing)
            self._metrics.queue_depth.set(self.waiting)

    async def acquire(self) -> None:
        """Take a generation slot, waiting in line if there is room in it; else raise 429."""
        if self.ongoing >= self.max_ongoing and self.waiting >= self.max_queued:
            raise overloaded(RETRY_AFTER_S)
        self.waiting += 1
        self._publish()
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.ongoing += 1
        self._publish()

    def release(self) -> None:
        self.ongoing -= 1
        self._semaphore.release()
        self._publish()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()
