"""hf:// revisions resolve to a commit (the weight cache's exact key), against a local stand-in of the Hub's API."""

from __future__ import annotations

import asyncio

from aiohttp import web

from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.reconcile.model_source import resolve_hub_revision

from .conftest import local_hub

SHA = "0123456789abcdef0123456789abcdef01234567"


async def _resolve(revision: str | None, fetch: bool = True) -> tuple[str | None, list[str]]:
    seen: list[str] = []

    async def revision_info(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.match_info["rev"] == "missing":
            return web.json_response({"error": "Revision Not Found"}, status=404)
        return web.json_response({"id": "org/model", "sha": SHA})

    async with local_hub({"/api/models/org/model/revision/{rev}": revision_info}) as url:
        config = OperatorConfig(hub_endpoint=url, fetch_hub_config=fetch)
        return await resolve_hub_revision("org/model", revision, None, config), seen


def test_a_branch_resolves_to_its_commit() -> None:
    assert asyncio.run(_resolve(None)) == (SHA, ["/api/models/org/model/revision/main"])
    assert asyncio.run(_resolve("v1.0"))[0] == SHA


def test_a_commit_is_kept_and_the_hub_is_not_asked() -> None:
    assert asyncio.run(_resolve(SHA)) == (SHA, [])


def test_unknown_revision_or_offline_gives_none() -> None:
    assert asyncio.run(_resolve("missing"))[0] is None
    assert asyncio.run(_resolve("main", fetch=False)) == (None, [])
