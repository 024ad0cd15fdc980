"""Serving-path benchmark (`make bench`): how much our app adds over a bare Ray Serve deployment.

    python -m bigmodel_serving.bench [--out docs/benchmarks.md] [--modes default,haproxy]

Each mode runs in a child process with its own local Ray (127.0.0.1) and measures, in one run:
(a) the engines called in-process, (b) the floor - a bare Serve deployment returning a constant,
(c) our app over HTTP with the fixed-latency stub engine and with the tiny transformers model, at
concurrency 1, 8 and 32, plus the time to answer 429 when overloaded. Request loops are bounded.
The "## Serving path" section of the output file is replaced; other sections are kept.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, cast

MODES = {
    "default": {},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}
CONCURRENCY = (1, 8, 32)
STUB_TTFT_S, STUB_TOKEN_S, STREAM_TOKENS = 0.020, 0.005, 16
SECTION = "## Serving path"
RAW_RESULTS = Path(".bench/serving.json")  # the last run's raw numbers (git-ignored)
SETTLE_S = 10
SEQUENTIAL_ROUNDS = 400
ASGI_CALLS = 3000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _args(served_name: str, uri: str, **limits: Any) -> dict[str, Any]:
    return {
        "model": {"uri": uri, "served_name": served_name},
        "engine": "transformers",
        "engine_args": {"max_model_len": 512},
        "limits": {"max_ongoing_requests": 64, "max_queued_requests": 128, **limits},
        "replica_resources": {"num_cpus": 0.25},
    }


async def _engine_direct(tiny_dir: Path) -> dict[str, Any]:
    """(a) The engines in-process: no HTTP, no Ray."""
    from bigmodel_serving.args import parse_serve_args
    from bigmodel_serving.bench_client import RunStats
    from bigmodel_serving.engines.base import Engine, GenerationRequest, SamplingParams
    from bigmodel_serving.engines.stub import StubEngineFactory
    from bigmodel_serving.engines.transformers_engine import TransformersEngine

    async def measure(engine: Engine, concurrency: int, rounds: int) -> dict[str, Any]:
        prompt_ids = engine.encode("Hello there, how are you today?", add_special_tokens=True)
        stats = RunStats()

        async def one(index: int) -> None:
            request = GenerationRequest(
                f"r{index}", "", prompt_ids, SamplingParams(max_tokens=STREAM_TOKENS, temperature=0)
            )
            started = last = time.perf_counter()
            first = True
            async for delta in engine.generate(request):
                now = time.perf_counter()
                if delta.text:
                    (stats.ttfts if first else stats.inter_token).append(now - (started if first else last))
                    first, last = False, now
            stats.requests += 1

        await one(-1)  # warm-up (first torch call), not recorded
        stats = RunStats()
        started = time.perf_counter()
        for round_index in range(rounds):
            await asyncio.gather(*(one(round_index * concurrency + i) for i in range(concurrency)))
        stats.elapsed = time.perf_counter() - started
        return stats.summary()

    import torch

    torch.set_num_threads(1)  # as in a replica: Ray sets OMP_NUM_THREADS=1 for num_cpus < 1
    stub_args = parse_serve_args(_args("stub", "file:///none"))
    stub = StubEngineFactory(ttft_s=STUB_TTFT_S, per_token_s=STUB_TOKEN_S)(stub_args)
    await stub.start()
    tiny = TransformersEngine(parse_serve_args(_args("tiny", tiny_dir.as_uri())))
    await tiny.start()
    return {
        "asgi_us": await _asgi_cost(stub_args),
        "stub": {c: await measure(stub, c, 3) for c in CONCURRENCY},
        "tiny": {c: await measure(tiny, c, max(1, 24 // c)) for c in CONCURRENCY},
    }


async def _asgi_cost(args: Any) -> dict[str, float]:
    """Our ASGI app called in-process (no HTTP, no Ray), zero-latency stub: the CPU our code adds."""
    from bigmodel_serving.api import create_api, make_runtime
    from bigmodel_serving.engines.stub import StubEngineFactory

    engine = StubEngineFactory()(args)
    app = create_api(make_runtime(args, engine, await engine.start()))
    body = json.dumps({"model": "stub", "prompt": "hi", "max_tokens": 1}).encode()

    async def call(method: str, path: str, payload: bytes) -> None:
        messages = [{"type": "http.request", "body": payload, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            return None

        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "http_version": "1.1",
            "asgi": {"version": "3.0"},
        }
        await app(scope, receive, send)

    result = {}
    for name, method, path, payload in (
        ("completion", "POST", "/v1/completions", body),
        ("models", "GET", "/v1/models", b""),
    ):
        for _ in range(200):
            await call(method, path, payload)
        started = time.perf_counter()
        for _ in range(ASGI_CALLS):
            await call(method, path, payload)
        result[name] = round((time.perf_counter() - started) / ASGI_CALLS * 1e6, 1)
    return result


def _deploy(port: int, tiny_dir: Path) -> None:
    from ray import serve
    from starlette.responses import PlainTextResponse

    from bigmodel_serving.app import build_app
    from bigmodel_serving.engines.stub import StubEngineFactory
    from bigmodel_serving.local import start_local_ray

    start_local_ray(num_cpus=8)
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
    class Floor:
        """The least a Serve HTTP deployment can do: (read the POST body,) answer a constant."""

        async def __call__(self, request: Any) -> PlainTextResponse:
            if request.method == "POST":
                await request.body()
            return PlainTextResponse("ok")

    quiet = {"log_level": "WARNING", "enable_access_log": False}
    serve.run(cast(Any, Floor).bind(), name="floor", route_prefix="/floor", logging_config=quiet)
    zero = build_app(_args("stub", "file:///none"), engine_factory=StubEngineFactory())
    serve.run(zero, name="stub0", route_prefix="/stub0", logging_config=quiet)
    timed = build_app(_args("stub", "file:///none"), engine_factory=StubEngineFactory(STUB_TTFT_S, STUB_TOKEN_S))
    serve.run(timed, name="stubL", route_prefix="/stubL", logging_config=quiet)
    overload_args = _args("stub", "file:///none", max_ongoing_requests=1, max_queued_requests=1)
    overload = build_app(overload_args, engine_factory=StubEngineFactory(ttft_s=3.0))
    serve.run(overload, name="over", route_prefix="/over", logging_config=quiet)
    serve.run(build_app(_args("tiny", tiny_dir.as_uri())), name="tiny", route_prefix="/tiny", logging_config=quiet)


async def _http(base: str) -> dict[str, Any]:
    from bigmodel_serving.bench_client import (
        plain_request,
        run_interleaved,
        run_load,
        streaming_request,
        time_rejections,
    )

    one_token = {"model": "stub", "prompt": "hi", "max_tokens": 1}
    stream_body = {"model": "stub", "prompt": "hi", "max_tokens": STREAM_TOKENS}
    tiny_body = {
        "model": "tiny",
        "prompt": "Hello there, how are you today?",
        "max_tokens": STREAM_TOKENS,
        "temperature": 0,
    }
    results: dict[str, Any] = {"sequential": {}, "concurrent": {}, "stream_stub": {}, "stream_tiny": {}}
    floor_get = plain_request("GET", f"{base}/floor")
    floor = plain_request("POST", f"{base}/floor", one_token)
    app = plain_request("POST", f"{base}/stub0/v1/completions", one_token)
    models = plain_request("GET", f"{base}/stub0/v1/models")
    sequential = {"floor_get": floor_get, "floor_post": floor, "app_completion": app, "app_models": models}
    for name, stats in (await run_interleaved(sequential, rounds=SEQUENTIAL_ROUNDS)).items():
        results["sequential"][name] = stats.summary()
    for concurrency in CONCURRENCY:
        total = 100 * max(1, concurrency // 4)
        results["concurrent"][concurrency] = {
            "floor_post": (await run_load(floor, total=total, concurrency=concurrency)).summary(),
            "app_completion": (await run_load(app, total=total, concurrency=concurrency)).summary(),
        }
        stream_stub = streaming_request(f"{base}/stubL/v1/completions", stream_body)
        results["stream_stub"][concurrency] = (
            await run_load(stream_stub, total=4 * concurrency + 16, concurrency=concurrency)
        ).summary()
        stream_tiny = streaming_request(f"{base}/tiny/v1/completions", tiny_body)
        results["stream_tiny"][concurrency] = (
            await run_load(stream_tiny, total=max(16, 2 * concurrency), concurrency=concurrency, warmup=2)
        ).summary()
    overload_body = {"model": "stub", "prompt": "hi", "max_tokens": 1}
    results["overload"] = await time_rejections(f"{base}/over/v1/completions", overload_body, fill=4, probes=20)
    return results


def _child(mode: str, out_json: Path) -> None:
    """Run one measurement in this (fresh) process and write its JSON result."""
    from bigmodel_training.tinymodel import make_tiny_model

    tiny_dir = make_tiny_model()
    started = time.perf_counter()
    if mode == "direct":
        result: dict[str, Any] = {"direct": asyncio.run(_engine_direct(tiny_dir))}
    else:
        import ray
        from ray import serve

        port = _free_port()
        _deploy(port, tiny_dir)
        try:
            result = {"http": asyncio.run(_http(f"http://127.0.0.1:{port}"))}
        finally:
            serve.shutdown()
            ray.shutdown()
    result.update(mode=mode, env=MODES.get(mode, {}), seconds=round(time.perf_counter() - started))
    out_json.write_text(json.dumps(result, indent=1))


def _run_child(mode: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        out_json = Path(scratch) / "result.json"
        print(f"bench: {mode} ...", flush=True)
        env = {**os.environ, **MODES.get(mode, {})}
        command = [sys.executable, "-m", "bigmodel_serving.bench", "--child", mode, "--json", str(out_json)]
        result = subprocess.run(command, env=env, check=False, timeout=900)
        time.sleep(SETTLE_S)  # let the previous Ray's processes exit before measuring again
        if result.returncode != 0 or not out_json.exists():
            print(f"bench: {mode} failed (exit {result.returncode})", flush=True)
            return {"mode": mode, "env": MODES.get(mode, {}), "failed": result.returncode}
        return dict(json.loads(out_json.read_text()))


def _machine() -> str:
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=False).stdout.strip()
    import ray

    return f"`{uname}`, {os.cpu_count()} CPUs, Python {platform.python_version()}, Ray {ray.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--modes", default="default,haproxy", help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--render-only", action="store_true", help=f"re-render from {RAW_RESULTS}, measure nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        _child(options.child, options.json)
        return 0
    from bigmodel_serving.bench_report import render_section, replace_section

    if options.render_only:
        runs = json.loads(RAW_RESULTS.read_text())
    else:
        direct = _run_child("direct")  # once, before any Ray starts: the engines alone
        runs = [{**_run_child(mode), "direct": direct.get("direct")} for mode in options.modes.split(",")]
        RAW_RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RAW_RESULTS.write_text(json.dumps(runs, indent=1))
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = render_section(runs, machine=_machine(), date=date)
    replace_section(options.out, SECTION, section)
    print(section)
    return 0 if all("failed" not in run for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
