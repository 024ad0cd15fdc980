"""Run CPU-bound work (planning, parsing a config) off the event loop, with a time limit.

One slow call must not stall every other object's reconcile, watch and the operator's shutdown. The
work runs in a daemon thread: a call that overruns its limit is abandoned (its thread finishes on
its own and never delays the exit), and the caller gets TimeoutError. The planner's own input
bounds keep every call short; the limit is the second line of defence.

The daemon threads are reused (a thread per call cost ~0.1-0.2 ms of CPU to start, twice per reconcile:
issue 21): a call goes to an idle thread, else to a new one, so an abandoned call never holds up another.
A thread idle for IDLE_SECONDS exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
PLAN_TIMEOUT_SECONDS = 10.0
IDLE_SECONDS = 30.0
Call = Callable[[], Callable[[], None]]  # does the work, returns how to hand its outcome over


class _Threads:
    """Daemon threads that run one call at a time. `idle` counts the threads waiting for a call, less the calls
    already queued for them, so a queued call always has a thread that will take it. A call does its work and
    returns how to hand its outcome over; its thread counts itself idle before that, so that the caller's next
    call finds it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: queue.SimpleQueue[Call] = queue.SimpleQueue()
        self.idle = 0
        self.started = 0

    def submit(self, call: Call) -> None:
        with self.lock:
            if self.idle:
                self.idle -= 1
                self.calls.put(call)
                return
            self.started += 1
        threading.Thread(target=self._serve, args=(call,), name="bigmodel-offload", daemon=True).start()

    def _serve(self, call: Call) -> None:
        while True:
            hand_over = call()
            with self.lock:
                self.idle += 1
            hand_over()
            while True:
                try:
                    call = self.calls.get(timeout=IDLE_SECONDS)
                    break
                except queue.Empty:
                    with self.lock:
                        if self.calls.empty():  # nothing was queued for this thread: it goes
                            self.idle -= 1
                            return


_threads = _Threads()


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

    def run() -> Callable[[], None]:
        result: Any = None
        error: BaseException | None = None
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc

        def hand_over() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the operator is exiting
                loop.call_soon_threadsafe(_settle, future, result, error)

        return hand_over

    _threads.submit(run)
    return await asyncio.wait_for(future, limit_s)
