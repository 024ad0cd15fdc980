"""Calls to the application's helper actors (quota, feedback, canary): a timeout on each, one error type.

The actors are detached and restart when their process dies (`max_restarts=-1`), losing what they held;
while one is gone or restarting a call fails (`RayActorError`, `ActorUnavailableError`), or hangs on a
wedged one. `call_actor` turns any of that into `DependencyUnavailableError`, which the ingress answers
with 503 + Retry-After (never 500); callers that can go on without the actor (usage flushes, metrics,
canary syncs) log it and go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

REQUEST_PATH_TIMEOUT_S = 2.0  # a request waits this long at most for an actor (a healthy one takes ~1 ms)
BACKGROUND_TIMEOUT_S = 5.0  # flushes, syncs, metrics
RETRY_AFTER_S = 2


class DependencyUnavailableError(Exception):
    """A helper actor did not answer in time or is gone; `what` names it for the client and the log."""

    def __init__(self, what: str, cause: BaseException | None = None) -> None:
        reason = "did not answer in time" if isinstance(cause, TimeoutError) else "is not available"
        super().__init__(f"The {what} {reason}.")
        self.what = what
        self.underlying = cause  # (not `cause`: that name means a wrapped error to RayTaskError readers)


async def call_actor(what: str, pending: Awaitable[Any], timeout_s: float | None = None) -> Any:
    """The result of an actor call (`actor.method.remote(...)`), or DependencyUnavailableError.

    `timeout_s`: default `REQUEST_PATH_TIMEOUT_S` (read at each call).
    """
    try:
        return await asyncio.wait_for(_awaited(pending), REQUEST_PATH_TIMEOUT_S if timeout_s is None else timeout_s)
    except asyncio.CancelledError:
        raise
    except Exception as error:
        raise DependencyUnavailableError(what, error) from error


async def _awaited(pending: Awaitable[Any]) -> Any:
    return await pending
