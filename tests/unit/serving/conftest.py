"""In-process fixtures for the serving app: the real API and guard, with the stub engine, no Ray."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from bigmodel_serving.api import Runtime, create_api, make_runtime
from bigmodel_serving.args import parse_serve_args
from bigmodel_serving.engines.stub import StubEngineFactory

BASE_ARGS: dict[str, Any] = {
    "model": {"uri": "file:///models/tiny", "served_name": "tiny"},
    "engine": "transformers",
    "engine_args": {"max_model_len": 64},
    "adapters": [{"name": "sql", "uri": "file:///adapters/sql"}],
}


def merged(overrides: dict[str, Any]) -> dict[str, Any]:
    """BASE_ARGS with top-level sections replaced/extended by `overrides`."""
    result = {key: dict(value) if isinstance(value, dict) else value for key, value in BASE_ARGS.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = {**result[key], **value}
        else:
            result[key] = value
    return result


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ClientFactory = Callable[..., Any]


@pytest.fixture
def api_client() -> Callable[..., Any]:
    """`async with api_client(overrides, ttft_s=..., per_token_s=...) as (client, runtime):`."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def open_client(
        overrides: dict[str, Any] | None = None, *, ttft_s: float = 0.0, per_token_s: float = 0.0
    ) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
        args = parse_serve_args(merged(overrides or {}))
        engine = StubEngineFactory(ttft_s=ttft_s, per_token_s=per_token_s)(args)
        runtime = make_runtime(args, engine, await engine.start())
        transport = httpx.ASGITransport(app=create_api(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, runtime

    return open_client
