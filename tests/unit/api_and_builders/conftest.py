"""Shared helpers for the operator's unit tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "docs" / "examples"
GOLDEN = Path(__file__).parent / "golden"


def load_example(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    body["metadata"].update(namespace="team-a", uid="00000000-0000-0000-0000-000000000001", generation=1)
    return body


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def assert_golden(name: str, data: Any) -> None:
    """Compare with tests/unit/api_and_builders/golden/<name>; BIGMODEL_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    text = yaml.dump(data, Dumper=_NoAliases, sort_keys=True, width=120)
    if os.environ.get("BIGMODEL_UPDATE_GOLDEN") == "1" or not path.exists():
        path.write_text(text)
        if os.environ.get("BIGMODEL_UPDATE_GOLDEN") != "1":
            pytest.fail(f"golden file {path.name} did not exist and was written: review and commit it")
    assert text == path.read_text(), f"{name} differs from the golden file (BIGMODEL_UPDATE_GOLDEN=1 to accept)"


@asynccontextmanager
async def local_hub(routes: dict[str, Callable[..., Awaitable[Any]]]) -> AsyncIterator[str]:
    """A real aiohttp server on 127.0.0.1 playing the Hub with `routes` (GET path -> handler); yields its URL."""
    from aiohttp import web

    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
