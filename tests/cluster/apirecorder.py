"""A recording reverse proxy in front of the apiserver: which API calls does the operator really make?

    python tests/cluster/apirecorder.py --kubeconfig .cluster/kubeconfig --out calls.jsonl --port-file p

listens on 127.0.0.1 (plain HTTP), forwards every request to the kubeconfig's apiserver over TLS
with the caller's own Authorization header (so RBAC applies to the caller, not to this proxy), streams
watches, and appends one JSON line per request: method, path, watch, status. `summarize()` turns the
lines into RBAC terms (apiGroup, resource, verb). chartidentity.operator_kubeconfig() puts it in
front of the operator when BIGMODEL_OPERATOR_RECORD names the output file.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import ssl
from collections.abc import Iterable
from pathlib import Path

import yaml

HOP_HEADERS = {"host", "connection", "transfer-encoding", "content-length", "keep-alive", "upgrade"}
_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$"
)


def _upstream(kubeconfig: Path) -> tuple[str, ssl.SSLContext]:
    config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    if "certificate-authority-data" in cluster:
        ctx = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    else:
        ctx = ssl.create_default_context(cafile=str(kubeconfig.parent / cluster["certificate-authority"]))
    return cluster["server"].rstrip("/"), ctx


async def serve(kubeconfig: Path, out: Path, port_file: Path) -> None:
    import aiohttp
    from aiohttp import web

    server, ctx = _upstream(kubeconfig)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx), timeout=aiohttp.ClientTimeout(None), auto_decompress=False
    )  # bytes pass through untouched: a gzip-encoded list stays gzip-encoded
    log = out.open("a", buffering=1)

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        body = await request.read()
        async with session.request(
            request.method, server + request.path_qs, headers=headers, data=body or None, allow_redirects=False
        ) as upstream:
            watch = request.query.get("watch") in {"1", "true"}
            log.write(
                json.dumps(
                    {
                        "method": request.method,
                        "path": request.path,
                        "query": request.query_string,
                        "watch": watch,
                        "status": upstream.status,
                    }
                )
                + "\n"
            )
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in HOP_HEADERS:
                    response.headers[key] = value
            try:
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionResetError, aiohttp.ClientError):
                pass  # the caller went away mid-watch (e.g. the operator stopped)
            return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    port_file.write_text(str(port))  # noqa: ASYNC240  (once, before serving)
    await asyncio.Event().wait()


def rbac_terms(lines: Iterable[dict]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource[/subresource], verb) for every recorded resource request."""
    terms = set()
    for line in lines:
        match = _PATH.match(line["path"])
        if not match:
            continue  # discovery and other non-resource URLs
        group = "" if match["core"] else match["group"]
        resource = match["resource"]
        name, sub = match["name"], match["sub"]
        if sub:
            resource = f"{resource}/{sub}"
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(line["method"])
        if verb is None:
            verb = "watch" if line["watch"] else ("get" if name else "list")
        terms.add((group, resource, verb))
    return terms


def summarize(path: Path) -> set[tuple[str, str, str]]:
    return rbac_terms(json.loads(line) for line in path.read_text().splitlines() if line.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--summary", action="store_true", help="print the RBAC terms of --out and exit")
    args = parser.parse_args()
    if args.summary:
        for group, resource, verb in sorted(summarize(args.out)):
            print(f"{group or 'core'}\t{resource}\t{verb}")
        return
    asyncio.run(serve(args.kubeconfig, args.out, args.port_file))


if __name__ == "__main__":
    main()
