"""Hold a request while the engine wakes from zero replicas, up to a bound.

Ray Serve queues a request whose deployment has no replica (min_replicas 0) and its autoscaler starts
one: the request waits in this ingress replica's handle and is answered when the engine is ready, with
no polling of ours. What Serve does not do is give up: the request would wait until Ray Serve LLM's
router timeout (408). So the ingress races the engine's first item against `wake_timeout_s`; when the
bound passes and the engine still has no RUNNING replica, it closes the stream (Serve drops the queued
request; the replica keeps starting for the next client) and answers 503 `model_not_ready` with
Retry-After. A replica that runs but is slow to answer (a long non-streamed generation) is not cut off:
the router's own timeout applies to it, as to any request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bigmodel_serving.args import ENGINE_DEPLOYMENT
from bigmodel_serving.errors import model_not_ready

T = TypeVar("T")
WAKE_TIMEOUT_DEFAULT_S = 300.0  # args.IngressConfig.wake_timeout_s
logger = logging.getLogger("ray.serve")


async def running_engine_replicas(app_name: str) -> int:
    """RUNNING replicas of this application's engine deployment, from Serve's controller (public API)."""
    from ray import serve

    def count() -> int:
        app = serve.status().applications.get(app_name)
        deployment = app.deployments.get(ENGINE_DEPLOYMENT) if app else None
        if deployment is None:
            return 0
        return sum(n for state, n in (deployment.replica_states or {}).items() if state == "RUNNING")

    try:
        return await asyncio.to_thread(count)
    except Exception as error:  # the controller cannot say: the bound stands (503 rather than wait on)
        logger.warning("bigmodel: could not read the engine's replicas from Serve: %r", error)
        return 0


async def within_wake_bound(call: Awaitable[T], bound_s: float, running_replicas: Callable[[], Awaitable[int]]) -> T:
    """`call` (Ray's router: it returns once the engine's first item is in); if it has not returned within
    `bound_s` and `running_replicas()` says the engine has none, it is cancelled and `model_not_ready` raised;
    else it keeps waiting (Ray's own router timeout applies)."""
    started = time.monotonic()
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=bound_s)
        if not done and await running_replicas() == 0 and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise model_not_ready(time.monotonic() - started)
        return await task
    except asyncio.CancelledError:
        task.cancel()  # the client went away while held
        raise
