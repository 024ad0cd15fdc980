"""The Ray Serve deployment: one replica = one engine + the HTTP API in front of it."""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import serve

from bigmodel_serving.api import Runtime, create_api, make_runtime
from bigmodel_serving.args import parse_serve_args
from bigmodel_serving.engines import EngineFactory, create_engine

logger = logging.getLogger("ray.serve")


@serve.deployment
@serve.ingress()
class BigModelServer:
    """Loads the model when the replica starts; serves the OpenAI API once loaded."""

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self, args: dict[str, Any], engine_factory: EngineFactory | None = None
    ) -> None:
        serve_args = parse_serve_args(args)
        started = time.perf_counter()
        logger.info("bigmodel: loading %s (%s engine)", serve_args.model.uri, serve_args.engine)
        engine = (engine_factory or create_engine)(serve_args)
        info = await engine.start()
        logger.info(
            "bigmodel: %s ready in %.1f s (max_model_len %d, adapters: %s)",
            serve_args.model.served_name,
            time.perf_counter() - started,
            info.max_model_len,
            ", ".join(info.adapters) or "none",
        )
        self.runtime: Runtime = make_runtime(serve_args, engine, info)

    def __serve_build_asgi_app__(self) -> Any:
        return create_api(self.runtime)

    async def check_health(self) -> None:
        """Serve's replica health check: a failing engine gets the replica restarted."""
        await self.runtime.engine.check_health()
