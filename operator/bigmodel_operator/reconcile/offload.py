"""Run CPU-bound work (planning, parsing a config) off the event loop, with a time limit.

One slow call must not stall every other object's reconcile, watch and the operator's shutdown. The
work runs in a daemon thread: a call that overruns its limit is abandoned (its thread finishes on
its own and never delays the exit), and the caller gets TimeoutError. The planner's own input
bounds keep every call short; the limit is the second line of defence.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
PLAN_TIMEOUT_SECONDS = 10.0


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (timeout, cancellation)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def off_loop(work: Callable[[], T], *, limit_s: float = PLAN_TIMEOUT_SECONDS) -> T:
    """`work()` in a daemon thread; raises TimeoutError after `limit_s` seconds."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: the operator is exiting
            loop.call_soon_threadsafe(_settle, future, result, error)

    threading.Thread(target=run, name="bigmodel-offload", daemon=True).start()
    return await asyncio.wait_for(future, limit_s)
