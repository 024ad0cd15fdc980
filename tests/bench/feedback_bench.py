"""Feedback endpoint benchmark: what `POST /v1/feedback` costs, and where (issue 12: p99 ≤ 5 ms).

    python tests/bench/feedback_bench.py [--out docs/benchmarks.md] [--answers 50] [--posts 400]
                                              [--render-only]

Starts our application the way `bigmodel serve` does (`run_local`: Ray on 127.0.0.1, Serve's HTTP
proxy, the tiny random model on vLLM's CPU build) with API keys on and feedback to a local directory,
answers `--answers` chat completions, then times over keep-alive HTTP through Serve's proxy:

- floors: `GET /v1/models`, and `POST /v1/feedback` with a body refused 400 (same route, key check and
  body read, no actor call);
- `POST /v1/feedback` on an answered id, recorded (200);

at concurrency 1 (the three in turn, request by request, so the machine's drift hits all alike) and 8
(rounds taking turns). Then the server side, from this process (a Ray driver of the same cluster):
the ingress's ASGI app in process (guard, handler, the real actor call and sink), the actor call alone,
the actor's own work without Ray, and the sink append alone.

The raw numbers are kept in .bench/feedback.json; the "## Feedback endpoint" section of the output file
is replaced, other sections are kept. Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from http_load import OneRequest, RunStats, asgi_post_scope, percentile

SECTION = "## Feedback endpoint"
RAW_RESULTS = Path(".bench/feedback.json")
APP_NAME = "feedback-bench"
TARGET_P99_MS = 5.0
CONCURRENCY = (1, 8)
ROUNDS = 2  # concurrency 8: rounds per target, the targets taking turns
FLOOR_MODELS, FLOOR_REFUSED, RECORDED = "models", "refused", "recorded"
LABELS = {
    FLOOR_MODELS: "`GET /v1/models` (floor)",
    FLOOR_REFUSED: "`POST /v1/feedback` refused 400 (floor: same route, no actor call)",
    RECORDED: "`POST /v1/feedback` recorded (200)",
}
REFUSED_BODY = {"id": "chatcmpl-x", "rating": 0}  # rating out of range: a 400 before the actor


def _ms(values: list[float], q: float) -> float:
    return round(percentile(values, q) * 1000, 3)


def summary(values: list[float]) -> dict[str, Any]:
    """p50/p99 in milliseconds of durations in seconds."""
    return {"calls": len(values), "p50_ms": _ms(values, 50), "p99_ms": _ms(values, 99)}


def http_request(method: str, url: str, headers: dict[str, str], bodies: Callable[[], Any] | None) -> OneRequest:
    """One timed request with `headers`; `bodies()` gives each request's JSON body."""

    async def one(session: aiohttp.ClientSession, stats: RunStats) -> None:
        body = bodies() if bodies is not None else None
        started = time.perf_counter()
        async with session.request(method, url, json=body, headers=headers) as response:
            await response.read()
            stats.record_status(response.status)
        stats.latencies.append(time.perf_counter() - started)
        stats.requests += 1

    return one


def _http_summary(stats: RunStats) -> dict[str, Any]:
    full = stats.summary()
    return {key: full[key] for key in ("requests", "rps", "latency_p50_ms", "latency_p99_ms", "status_counts")}


async def measure_http(targets: dict[str, OneRequest], posts: int, logs: ServeLogs) -> dict[str, Any]:
    """The targets over HTTP at each concurrency (see the module doc); at concurrency 1 also the proxy's
    and the replica's own times of each feedback post, from their access logs."""
    from http_load import run_interleaved, run_load
    from serving_bench import load_average

    results: dict[str, Any] = {}
    loads = [load_average()]
    marks = logs.mark()
    solo = await run_interleaved(targets, rounds=posts, warmup=20)
    loads.append(load_average())
    results["1"] = {name: _http_summary(stats) for name, stats in solo.items()} | {"load_average": max(loads)}
    results["1"]["access_logs"] = logs.feedback_times(marks)
    for concurrency in CONCURRENCY[1:]:
        merged = {name: RunStats() for name in targets if name != FLOOR_MODELS}
        loads = [load_average()]
        for _ in range(ROUNDS):
            for name, stats in merged.items():
                stats.merge(await run_load(targets[name], total=posts, concurrency=concurrency, warmup=8))
            loads.append(load_average())
        results[str(concurrency)] = {name: _http_summary(s) for name, s in merged.items()}
        results[str(concurrency)]["load_average"] = max(loads)
    return results


ACCESS_LINE = re.compile(r" -- POST /v1/feedback (\d{3}) ([\d.]+)ms$")


class ServeLogs:
    """Serve's access logs of the proxy and the ingress replica: each request's time as each saw it."""

    def __init__(self, directory: Path, app_name: str) -> None:
        self.files = {
            "proxy": sorted(directory.glob("proxy_*.log")),
            "replica": sorted(directory.glob(f"replica_{app_name}_BigModelIngress_*.log")),
        }

    def mark(self) -> dict[Path, int]:
        return {path: path.stat().st_size for paths in self.files.values() for path in paths}

    def feedback_times(self, since: dict[Path, int]) -> dict[str, Any]:
        """p50/p99 of the feedback posts logged after `since`, by where (proxy, replica) and status."""
        out: dict[str, Any] = {}
        for where, paths in self.files.items():
            by_status: dict[str, list[float]] = {}
            for path in paths:
                with path.open("rb") as handle:
                    handle.seek(since.get(path, 0))
                    for line in handle.read().decode(errors="replace").splitlines():
                        found = ACCESS_LINE.search(line.rstrip())
                        if found:
                            by_status.setdefault(found[1], []).append(float(found[2]) / 1000)
            out[where] = {status: summary(times) for status, times in sorted(by_status.items())}
        return out


async def _interleaved(calls: dict[str, Callable[[int], Awaitable[Any]]], count: int) -> dict[str, list[float]]:
    """Each call `count` times (after 20 unrecorded rounds), one of each in turn."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for index in range(20 + count):
        for name, call in calls.items():
            started = time.perf_counter()
            await call(index)
            if index >= 20:
                times[name].append(time.perf_counter() - started)
    return times


async def asgi_post(app: Any, path: str, body: bytes, headers: dict[str, str]) -> int:
    """One POST through an ASGI app in this process; returns the status."""
    scope = asgi_post_scope(path, body, headers)
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status


async def measure_server_side(
    user_config: dict[str, Any], ids: list[str], key: tuple[str, str], posts: int
) -> dict[str, Any]:
    """The ingress's app, the actor call, the actor's work and the sink append (see the module doc)."""
    from serving_bench import load_average

    from bigmodel_serving.args import parse_ingress_config
    from bigmodel_serving.auth import ApiKeyStore
    from bigmodel_serving.feedback import FeedbackActor, FeedbackClient, feedback_actor
    from bigmodel_serving.ingress import APP, BigModelIngress, _replica

    key_name, key_value = key
    # The ingress without its Serve replica: the guard and the handler need the config, keys and client.
    ingress = BigModelIngress.__new__(BigModelIngress)
    ingress.app_name, ingress._quota_leases = APP_NAME, None
    ingress.config = parse_ingress_config(user_config)
    ingress.key_store = ApiKeyStore(ingress.config.auth.keys_dir or "")
    actor = feedback_actor(APP_NAME)
    ingress.feedback = FeedbackClient(ingress.config.feedback, actor)
    _replica["ingress"] = ingress
    headers = {"Authorization": f"Bearer {key_value}"}
    cycle = itertools.cycle(ids)
    loads = [load_average()]

    async def recorded(_: int) -> None:
        body = json.dumps({"id": next(cycle), "rating": 5}).encode()
        status = await asgi_post(APP, "/v1/feedback", body, headers)
        assert status == 200, status

    async def refused(_: int) -> None:
        status = await asgi_post(APP, "/v1/feedback", json.dumps(REFUSED_BODY).encode(), headers)
        assert status == 400, status

    async def actor_call(_: int) -> None:
        result = await actor.feedback.remote(next(cycle), key_name, 5, None)
        assert result["status"] == "recorded", result

    out: dict[str, Any] = {}
    try:
        # In turn, call by call, so the machine's drift hits the three alike.
        times = await _interleaved(
            {"ingress_refused": refused, "ingress_recorded": recorded, "actor_call": actor_call}, posts
        )
        out |= {name: summary(values) for name, values in times.items()}
    finally:
        if ingress._quota_leases is not None:
            await ingress._quota_leases.close()
        _replica.pop("ingress", None)
    loads.append(load_average())
    # The actor's class without Ray, the same sink kind: what one feedback costs inside the actor.
    local = FeedbackActor()
    with tempfile.TemporaryDirectory() as scratch:
        assert local.configure({"enabled": True, "sink_path": scratch}) is None
        turns = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "hi"}]
        for completion_id in ids:
            local.remember({"id": completion_id, "key": key_name, "model": "tiny", "messages": turns,
                            "answered_at": time.time()})  # fmt: skip

        async def actor_work(_: int) -> None:
            assert local.feedback(next(cycle), key_name, 5, None)["status"] == "recorded"

        record = {"messages": turns, "rating": 5, "correction": None, "model": "tiny", "key": key_name, "id": "x"}
        sink = local.book.sink
        assert sink is not None

        async def sink_append(_: int) -> None:
            sink.append(record)

        times = await _interleaved({"actor_work": actor_work, "sink_append": sink_append}, posts)
        out |= {name: summary(values) for name, values in times.items()}
    out["load_average"] = max(loads)
    return out


def _application(directory: Path, keys_dir: Path, sink: Path) -> dict[str, Any]:
    """The tiny model as `serving_bench.py`'s (c) renders it (keys, quotas), with feedback to `sink`."""
    from serving_bench import _ours, engine_kwargs

    config = json.loads((directory / "config.json").read_text())
    app = _ours("tiny", directory, engine_kwargs(config), keys_dir)
    app.update(name=APP_NAME, route_prefix="/")
    ingress = next(d for d in app["deployments"] if d["name"] == "BigModelIngress")
    ingress["user_config"]["feedback"] = {"enabled": True, "sink_path": str(sink)}
    return app


async def _answer(url: str, headers: dict[str, str], count: int) -> list[str]:
    """`count` chat completions, one at a time; their ids."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 4}
    ids = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        for _ in range(count):
            async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as response:
                data = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"chat completion: {response.status} {data}")
                ids.append(str(data["id"]))
    return ids


def run(answers: int, posts: int) -> dict[str, Any]:
    """Start the application, measure, stop it."""
    from serving_bench import _now, load_average

    started = time.perf_counter()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-feedback-") as scratch:
        keys_dir, sink = Path(scratch) / "keys", Path(scratch) / "sink"
        measured = _serve_and_measure(keys_dir, sink, answers, posts)
        records = sum(len(path.read_text().splitlines()) for path in sink.glob("*.jsonl"))
    return {
        "date": _now(),
        "answers": answers,
        "posts": posts,
        "load_average_before": load_before,
        **measured,
        "records_written": records,
        "seconds": round(time.perf_counter() - started),
    }


def _serve_and_measure(keys_dir: Path, sink: Path, answers: int, posts: int) -> dict[str, Any]:
    import ray._private.worker
    from serving_bench import BENCH_KEY, BENCH_KEY_NAME, _free_port, _model_dir

    from bigmodel_serving.local import run_local

    started = time.perf_counter()
    directory, _ = _model_dir("tiny")
    keys_dir.mkdir(mode=0o700)
    (keys_dir / BENCH_KEY_NAME).write_text(BENCH_KEY)
    app = _application(directory, keys_dir, sink)
    server = run_local(app, port=_free_port(), block=False, num_cpus=4)
    try:
        ready_s = round(time.perf_counter() - started)
        headers = {"Authorization": f"Bearer {BENCH_KEY}"}
        ids = asyncio.run(_answer(server.url, headers, answers))
        time.sleep(2)  # the actor redacts the answers in the background
        cycle = itertools.cycle(ids)
        url = f"{server.url}/v1/feedback"
        targets = {
            FLOOR_MODELS: http_request("GET", f"{server.url}/v1/models", headers, None),
            FLOOR_REFUSED: http_request("POST", url, headers, lambda: REFUSED_BODY),
            RECORDED: http_request("POST", url, headers, lambda: {"id": next(cycle), "rating": 5}),
        }
        node: Any = ray._private.worker._global_node  # this driver started Ray: its logs are here
        logs = ServeLogs(Path(node.get_logs_dir_path()) / "serve", APP_NAME)
        http = asyncio.run(measure_http(targets, posts, logs))
        ingress = next(d for d in app["deployments"] if d["name"] == "BigModelIngress")
        server_side = asyncio.run(measure_server_side(ingress["user_config"], ids, (BENCH_KEY_NAME, BENCH_KEY), posts))
    finally:
        server.shutdown()
    return {"ready_s": ready_s, "http": http, "server": server_side}


def _p(times: dict[str, Any]) -> list[float]:
    return [times["p50_ms"], times["p99_ms"]]


def _check(ok: bool) -> str:
    return "yes" if ok else "**no**"


def render_section(run: dict[str, Any], *, machine: str) -> str:
    from serving_bench_report import _table

    http, server = run["http"], run["server"]
    lines = [
        SECTION,
        "",
        f"`python tests/bench/feedback_bench.py` on {machine}, {run['date']}; load average "
        f"{run['load_average_before']} before the start (1 min; the highest seen during each row is next to it). "
        "Our application as `bigmodel serve` runs it (Ray on 127.0.0.1, Serve's HTTP proxy, one ingress "
        "replica with API keys and quotas on, the tiny model on vLLM's CPU build) with feedback to a local "
        f"directory; {run['answers']} chat completions answered first, then {run['posts']} requests per "
        "target and concurrency over keep-alive HTTP (aiohttp) through Serve's proxy: at concurrency 1 the "
        "targets in turn, request by request; at 8, two rounds taking turns. The floors pass the same proxy, "
        "replica and key check; the refused feedback also reads and validates the body, so recorded − "
        "refused is what recording adds: the feedback actor's call and the sink append.",
        "",
    ]
    rows = []
    for concurrency, by_target in http.items():
        for name, label in LABELS.items():
            if name in by_target:
                stats = by_target[name]
                codes = ", ".join(f"{code}: {count}" for code, count in stats["status_counts"].items())
                rows.append(
                    [
                        concurrency,
                        label,
                        stats["latency_p50_ms"],
                        stats["latency_p99_ms"],
                        stats["rps"],
                        codes,
                        by_target["load_average"],
                    ]
                )
    lines += _table(["concurrency", "request", "p50 ms", "p99 ms", "req/s", "statuses", "load avg (max)"], rows)
    solo = http["1"]
    recorded, refused = solo[RECORDED], solo[FLOOR_REFUSED]
    extra_p50 = round(recorded["latency_p50_ms"] - refused["latency_p50_ms"], 2)
    extra_p99 = round(recorded["latency_p99_ms"] - refused["latency_p99_ms"], 2)
    lines += [
        "",
        f"Target (issue 12): p99 ≤ {TARGET_P99_MS:g} ms at concurrency 1. Recorded feedback end to end: p99 "
        f"{recorded['latency_p99_ms']} ms ({_check(recorded['latency_p99_ms'] <= TARGET_P99_MS)}); the refused "
        f"floor alone: p99 {refused['latency_p99_ms']} ms. Over that floor, recording adds {extra_p50} ms at p50 "
        f"and {extra_p99} ms at p99 ({_check(extra_p99 <= TARGET_P99_MS)}).",
        "",
        f"Server side, {server['ingress_recorded']['calls']} calls each, one at a time, from the benchmark's "
        "process (a driver of the same Ray cluster, with the app's real feedback actor and quota actor), "
        f"load average {server['load_average']}:",
        "",
    ]
    pieces = [
        ("ingress_refused", "the ingress app in process (guard, key, handler), refused 400: no actor call"),
        ("ingress_recorded", "the ingress app in process, recorded: the above + the actor call + the sink"),
        ("actor_call", "the feedback actor's call alone (`FeedbackActor.feedback` over Ray)"),
        ("actor_work", "the actor's own work without Ray (look-up, record, sink append)"),
        ("sink_append", "the sink append alone (one JSONL line to a local directory)"),
    ]
    rows = [[label, server[key]["p50_ms"], server[key]["p99_ms"]] for key, label in pieces]
    logged = solo.get("access_logs", {})
    for where, label in (("proxy", "Serve's proxy"), ("replica", "the ingress replica")):
        for status, outcome in (("200", "recorded"), ("400", "refused")):
            times = logged.get(where, {}).get(status)
            if times:
                rows.append([f"{outcome}, as {label} timed it (its access log, concurrency 1 above)", *_p(times)])
    lines += _table(["piece", "p50 ms", "p99 ms"], rows)
    outside = round(recorded["latency_p50_ms"] - server["ingress_recorded"]["p50_ms"], 2)
    lines += [
        "",
        f"At p50, recorded feedback spends {outside} ms outside our ingress code (the client, Serve's proxy, "
        f"the hops to the replica and back) and {server['ingress_recorded']['p50_ms']} ms in it, of which "
        f"{server['actor_call']['p50_ms']} ms is the actor round trip and {server['actor_work']['p50_ms']} ms "
        "the actor's own work. Serve's access logs: the replica's time is its whole handling of the request "
        "(the body fetched back from the proxy included); the proxy's ends when its call to the replica has "
        "finished, after the client has the answer, so it can exceed the client's.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--answers", type=int, default=50, help="chat completions answered before the posts")
    parser.add_argument("--posts", type=int, default=400, help="requests per target and concurrency")
    parser.add_argument("--render-only", action="store_true", help=f"re-render from {RAW_RESULTS}, measure nothing")
    options = parser.parse_args(argv)
    from serving_bench import _machine
    from serving_bench_report import replace_section

    if options.render_only:
        result = json.loads(RAW_RESULTS.read_text())
    else:
        result = run(options.answers, options.posts)
        RAW_RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RAW_RESULTS.write_text(json.dumps(result, indent=1))
    section = render_section(result, machine=_machine())
    replace_section(options.out, SECTION, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
