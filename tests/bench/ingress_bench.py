"""What our ingress adds to a streamed request over Ray Serve LLM's stock ingress, the engine taken out.

Run by `python tests/bench/serving_bench.py` in its Ray driver, after the servers are measured; alone
(`python tests/bench/ingress_bench.py`: a local Ray for the quota actor, no vLLM) it prints the same JSON.

End to end (serving_bench.py), at concurrency 8 and 32 the engine's steps (tens of ms on CPU) decide when a request's
first token comes, and the servers' TTFT p50 differ by whole steps from run to run, either way. Here the
engine is taken out: both ingresses run in this process on one event loop, as in a Serve replica — (b) Ray's
`OpenAiIngress`, (c) our `BigModelIngress` behind its `GuardMiddleware`, keys and quotas on (the running
app's real quota actor) — and both call the same stand-in engine handle, which streams a fixed completion as
vLLM's server does (first text after `FIRST_TOKEN_S`, then one every `INTER_TOKEN_S`; the usage chunk when
asked for; `[DONE]`). Each request takes the same ASGI path (body parsed into a `CompletionRequest`, the
response streamed), so (c) − (b) is the ingress's own work and its contention on the event loop: key lookup,
quota admission and charge, model routing, the usage scan of every chunk. The time to the end of the answer
also counts the usage chunk our ingress asks the engine for (quotas count tokens) and drops when the client
did not ask for it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

FIRST_TOKEN_S = 0.02
INTER_TOKEN_S = 0.005
TOKENS = 16
# (concurrency, batches of that many requests at once, per ingress and round)
PLAN = ((1, 100), (8, 25), (32, 8))
ROUNDS = 4

Scope = MutableMapping[str, Any]
App = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class StubEngine:
    """The engine deployment's streaming handle as the ingress sees it; no engine behind it."""

    def __init__(self, model: str) -> None:
        self.model = model

    def options(self, **_: Any) -> StubEngine:
        return self

    @property
    def completions(self) -> StubEngine:
        return self

    def remote(self, body: Any, raw_request: Any = None) -> AsyncIterator[str]:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return self._stream(include_usage)

    async def _stream(self, include_usage: bool) -> AsyncIterator[str]:
        head = {"id": "cmpl-bench", "object": "text_completion", "created": 0, "model": self.model}
        await asyncio.sleep(FIRST_TOKEN_S)
        for index in range(TOKENS):
            if index:
                await asyncio.sleep(INTER_TOKEN_S)
            reason = "length" if index == TOKENS - 1 else None
            yield _sse({**head, "choices": [{"index": 0, "text": f" t{index}", "finish_reason": reason}]})
        if include_usage:
            usage = {"prompt_tokens": 16, "completion_tokens": TOKENS, "total_tokens": 16 + TOKENS}
            yield _sse({**head, "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"


def completions_app(ingress: Any) -> App:
    """The ASGI path both ingresses take: parse the body, call `completions`, stream the response."""
    from ray.serve.llm.openai_api_models import CompletionRequest
    from starlette.requests import Request

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        body = CompletionRequest.model_validate_json(await request.body())
        response = await ingress.completions(body, request)
        await response(scope, receive, send)

    return app


async def timed_request(app: App, body: bytes, headers: dict[str, str]) -> tuple[float, int, float]:
    """(seconds to the first text chunk, status, seconds to the end) of one streamed POST /v1/completions."""
    from http_load import asgi_post_scope

    scope = asgi_post_scope("/v1/completions", body, headers)
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    done = asyncio.Event()
    started = time.perf_counter()
    first: float | None = None
    status = 0

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await done.wait()  # the client stays connected until the answer ends
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal first, status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif first is None and b'"text"' in message.get("body", b""):
            first = time.perf_counter()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    ended = time.perf_counter()
    return (first or ended) - started, status, ended - started


async def compare(app_name: str, user_config: dict[str, Any], key: str, model: str = "bench") -> dict[str, Any]:
    """TTFT p50/p99 of (b) and (c) at each concurrency in PLAN; the two take turns, batch by batch."""
    from http_load import percentile
    from ray.serve.llm.ingress import OpenAiIngress

    from bigmodel_serving.ingress import BigModelIngress
    from bigmodel_serving.ingress_guard import GuardMiddleware, unregister

    card = {"id": model, "object": "model", "owned_by": "bench", "permission": [], "metadata": {}}
    stock = OpenAiIngress({model: StubEngine(model)}, {model: card})  # type: ignore[dict-item]
    ours = BigModelIngress({model: StubEngine(model)}, {model: card}, app_name=app_name)
    ours.reconfigure(user_config)
    apps: dict[str, tuple[App, dict[str, str]]] = {
        "b": (completions_app(stock), {}),
        "c": (GuardMiddleware(completions_app(ours)), {"Authorization": key}),
    }
    body = json.dumps({"model": model, "prompt": "Hello there", "max_tokens": TOKENS, "stream": True}).encode()
    results: dict[str, Any] = {}
    try:
        for name, (app, headers) in apps.items():  # warm both paths (imports, the quota lease)
            for _ in range(20):
                assert (await timed_request(app, body, headers))[1] == 200, name
        for concurrency, batches in PLAN:
            ttfts: dict[str, list[float]] = {"b": [], "c": []}
            totals: dict[str, list[float]] = {"b": [], "c": []}
            for round_index in range(ROUNDS):
                for name in ("b", "c") if round_index % 2 == 0 else ("c", "b"):
                    app, headers = apps[name]
                    for _ in range(batches):
                        answers = await asyncio.gather(*(timed_request(app, body, headers) for _ in range(concurrency)))
                        assert all(status == 200 for _, status, _ in answers), answers
                        ttfts[name] += [first for first, _, _ in answers]
                        totals[name] += [total for _, _, total in answers]
            row: dict[str, Any] = {
                name: {
                    "requests": len(values),
                    "ttft_p50_ms": round(percentile(values, 50) * 1000, 3),
                    "ttft_p99_ms": round(percentile(values, 99) * 1000, 3),
                    "total_p50_ms": round(percentile(totals[name], 50) * 1000, 3),
                }
                for name, values in ttfts.items()
            }
            row["diff_p50_ms"] = round(row["c"]["ttft_p50_ms"] - row["b"]["ttft_p50_ms"], 3)
            row["total_diff_p50_ms"] = round(row["c"]["total_p50_ms"] - row["b"]["total_p50_ms"], 3)
            results[str(concurrency)] = row
    finally:
        if ours._quota_leases is not None:
            await ours._quota_leases.close()
        unregister()
    return {"first_token_s": FIRST_TOKEN_S, "inter_token_s": INTER_TOKEN_S, "tokens": TOKENS, "load": results}


def main() -> int:
    """Alone (no vLLM): a local Ray for the quota actor, then `compare` with keys and quotas on, as JSON."""
    import tempfile
    from pathlib import Path

    import ray
    from serving_bench import BENCH_KEY, BENCH_KEY_NAME, _ingress_user_config

    from bigmodel_serving.local import start_local_ray

    keys_dir = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    (keys_dir / BENCH_KEY_NAME).write_text(BENCH_KEY)
    start_local_ray(num_cpus=2)
    try:
        result = asyncio.run(compare("ingress-bench", _ingress_user_config(keys_dir), f"Bearer {BENCH_KEY}"))
    finally:
        ray.shutdown()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
