"""The metrics deployment: `GET /metrics` on a port of its own, never on the public serving port.

The public port (Serve's HTTP proxy, behind the BigModel's Service and Ingress) answers API clients;
/metrics names every API key and its usage, and the canary's state, so it is served elsewhere: one
replica of `BigModelMetrics`, placed on the Ray head (a sliver of the head-only resource, no CPU), binds
`args.metrics.host:port` (8079 by default; the operator names the head's container port `bm-metrics`,
which the chart's PodMonitor scrapes and neither the Ingress nor the serve Service exposes).

One scrape asks, each with a timeout and on its own:
- every engine replica for vLLM's metrics (a Serve broadcast; a replica that fails is left out);
- one ingress replica for the application's own families (per-key usage from the quota actor, canary
  routes, feedback scores), each of which the ingress guards the same way;
and adds `bigmodel_metrics_source_up{source}` for each. A source that fails never takes the others down.

A port that cannot be bound (a replica replacing another while the old one still holds it, or another
program) is logged and tried again every few seconds, and the replica runs on meanwhile: metrics must
never take the application down. (No SO_REUSEPORT: two applications on one machine would then share
a port without a word.)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bigmodel_serving.actor_calls import BACKGROUND_TIMEOUT_S, call_actor
from bigmodel_serving.args import INGRESS_DEPLOYMENT
from bigmodel_serving.canary import replica_app_name
from bigmodel_serving.metrics import CONTENT_TYPE, merge_engine_metrics, render_sources

logger = logging.getLogger("ray.serve")

METRICS_PATH = "/metrics"
BIND_RETRY_S = 3.0


class BigModelMetrics:
    """Serves GET /metrics (and GET /health) on `host:port` from this replica's event loop."""

    async def __init__(  # type: ignore[misc]
        self, engine: Any, *, host: str, port: int, app_name: str | None = None
    ) -> None:
        self.engine = engine
        self.app_name = replica_app_name(app_name or "default")
        self.host, self.port = host, port
        self._runner: Any = None
        self._retrying: asyncio.Task[None] | None = None
        if not await self._listen():
            self._retrying = asyncio.get_running_loop().create_task(self._listen_until_bound())

    async def _listen(self) -> bool:
        from aiohttp import web

        app = web.Application()
        app.router.add_get(METRICS_PATH, self._metrics)
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
        except OSError as error:
            logger.error("bigmodel: metrics listener on %s:%d not started: %r", self.host, self.port, error)
            await runner.cleanup()
            return False
        self._runner = runner
        logger.info("bigmodel: metrics on http://%s:%d%s", self.host, self.port, METRICS_PATH)
        return True

    async def _listen_until_bound(self) -> None:
        while True:
            await asyncio.sleep(BIND_RETRY_S)
            if await self._listen():
                return

    async def _metrics(self, request: Any) -> Any:
        from aiohttp import web

        return web.Response(body=(await self.collect()).encode(), headers={"Content-Type": CONTENT_TYPE})

    async def _health(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response({"status": "ok"})

    async def collect(self) -> str:
        """One exposition: vLLM's metrics, the application's own, and which sources answered."""
        sources: dict[str, bool] = {}
        engine_text, app_text = "", ""
        try:
            # Each replica's Serve id (stable while it lives, as in Serve's logs) labels its series; a position
            # in the broadcast's list would swap series between replicas when one is added or removed.
            replies = await self.engine.broadcast("metrics_snapshot").results_async(
                timeout_s=BACKGROUND_TIMEOUT_S, return_exceptions=True
            )
            texts = [(str(reply["replica"]), str(reply["text"])) for reply in replies if isinstance(reply, dict)]
            engine_text = merge_engine_metrics(texts)
            sources["engine"] = bool(texts) and len(texts) == len(replies)
        except Exception as error:
            logger.warning("bigmodel: engine metrics unavailable: %r", error)
            sources["engine"] = False
        try:
            from ray import serve

            ingress = serve.get_deployment_handle(INGRESS_DEPLOYMENT, self.app_name)
            reply = await call_actor("ingress", ingress.app_metrics.remote(), BACKGROUND_TIMEOUT_S)
            app_text = str(reply["text"])
            sources["ingress"] = True
            sources.update({str(name): bool(up) for name, up in reply["sources"].items()})
        except Exception as error:
            logger.warning("bigmodel: the application's metrics are unavailable: %r", error)
            sources["ingress"] = False
        return engine_text + app_text + render_sources(sources)

    async def check_health(self) -> None:
        """Serve's health check: the replica answers (a listener that could not bind is only logged)."""

    async def __del__(self) -> None:
        if self._retrying is not None:
            self._retrying.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
