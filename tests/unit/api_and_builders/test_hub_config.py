"""The Hub config download (issue 21): streamed with a hard 256 KiB cap, parsed off the event loop, and
cached in a bounded LRU. A real aiohttp server on 127.0.0.1 plays the Hub."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from bigmodel_operator.conditions import Reason
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.reconcile import model_source
from bigmodel_operator.reconcile.model_source import MAX_CONFIG_BYTES, HubConfigCache, fetch_hub_config

from .conftest import local_hub

CONFIG = {"model_type": "llama", "hidden_size": 64}


async def _with_hub(check: Any) -> None:
    sent = {"bytes": 0, "requests": 0}

    async def endless(request: web.Request) -> web.StreamResponse:
        sent["requests"] += 1
        response = web.StreamResponse()  # chunked: no Content-Length to trust
        await response.prepare(request)
        try:
            for _ in range(4096):  # 64 MiB if nobody stops reading
                await response.write(b" " * 16384)
                sent["bytes"] += 16384
        except (ConnectionResetError, RuntimeError):
            pass
        return response

    async def declared(request: web.Request) -> web.Response:  # Content-Length says too big up front
        sent["requests"] += 1
        return web.Response(body=b" " * (MAX_CONFIG_BYTES + 1))

    async def good(request: web.Request) -> web.Response:
        sent["requests"] += 1
        return web.json_response(CONFIG)

    routes = {
        "/org/endless/resolve/main/config.json": endless,
        "/org/declared/resolve/main/config.json": declared,
        "/org/good/resolve/{rev}/config.json": good,
    }
    async with local_hub(routes) as url:
        await check(OperatorConfig(hub_endpoint=url), sent)


def test_an_endless_body_is_cut_off_at_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_source, "_hub_cache", HubConfigCache())

    async def check(config: OperatorConfig, sent: dict[str, int]) -> None:
        result = await fetch_hub_config("org/endless", None, None, config)
        assert result.config is None and result.reason == Reason.MODEL_CONFIG_OUT_OF_BOUNDS, result
        assert "more than 262,144 bytes" in result.message
        await asyncio.sleep(0.2)
        assert sent["bytes"] < 8 * 2**20, f"the operator kept reading: {sent['bytes']:,} bytes sent"
        declared = await fetch_hub_config("org/declared", None, None, config)
        assert declared.reason == Reason.MODEL_CONFIG_OUT_OF_BOUNDS, declared

    asyncio.run(_with_hub(check))


def test_a_good_config_is_parsed_and_cached_per_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_source, "_hub_cache", HubConfigCache())

    async def check(config: OperatorConfig, sent: dict[str, int]) -> None:
        assert (await fetch_hub_config("org/good", None, None, config)).config == CONFIG
        assert (await fetch_hub_config("org/good", None, None, config)).config == CONFIG
        assert sent["requests"] == 1
        await fetch_hub_config("org/good", None, "token-a", config)  # another identity asks again
        assert sent["requests"] == 2

    asyncio.run(_with_hub(check))


def test_the_cache_is_bounded_by_count_bytes_and_age() -> None:
    now = [0.0]
    cache = HubConfigCache(ttl_s=60, max_entries=3, max_bytes=1000, clock=lambda: now[0])
    for i in range(5):
        cache.put((f"m{i}",), 100, {"i": i})
    assert len(cache) == 3 and cache.get(("m0",)) is None and cache.get(("m4",)) == {"i": 4}
    cache.get(("m2",))  # recently used: survives the next eviction
    cache.put(("m5",), 100, {})
    assert cache.get(("m2",)) is not None and cache.get(("m3",)) is None
    cache.put(("big",), 900, {})
    assert cache.bytes <= 1000 and len(cache) <= 2
    now[0] = 61
    assert cache.get(("big",)) is None and cache.bytes <= 100
