"""Micro-benchmark of the canary split's cost in the ingress (target: ≤ 0.5 ms p50 per request).

    python tests/bench/canary_bench.py [--requests 20000] [--out docs/benchmarks.md]

Measures, per request, on this machine and without Ray (the actor is an in-process fake; it is off the
request path anyway: a replica talks to it every `SYNC_INTERVAL_S`, not per request):

- `choose`: the version a key gets for a route (a dict look-up and one BLAKE2b hash);
- the wrapper: `CanaryRouter.open` + `AnswerWatch` around the engine stream (signals, `model` renamed in
  each chunk through openai_stream) minus the same stream iterated bare, for a streamed answer of 16 SSE
  chunks;
- total: `choose` + the wrapper, the canary's whole overhead on the request path.

Prints one JSON object with p50/p99 in microseconds; with `--out`, also replaces the "## Canary split"
section of that file (machine, date, load average and the table). Speed is measured, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bigmodel_serving.answer_watch import AnswerWatch
from bigmodel_serving.args import AdapterRoute
from bigmodel_serving.canary import CanaryActor, CanaryRouter

BASE = "bench"
CHUNKS = 16


class _Method:
    def __init__(self, fn: Callable[..., Awaitable[Any]]) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Awaitable[Any]:
        return self.fn(*args)


class InProcessActor:
    """A `CanaryActor` called the way Ray calls it (`actor.sync.remote(...)` -> awaitable), in this process
    (also the unit tests' shared actor)."""

    def __init__(self, app: str = "bench", base: str = BASE) -> None:
        self.actor = CanaryActor(app, base)
        self.sync = _Method(self.actor.sync)


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "p50_us": round(ordered[len(ordered) // 2] / 1000, 2),
        "p99_us": round(ordered[int(len(ordered) * 0.99)] / 1000, 2),
        "mean_us": round(statistics.fmean(ordered) / 1000, 2),
    }


async def _stream(engine_model: str) -> AsyncGenerator[Any, None]:
    for index in range(CHUNKS):
        yield f'data: {{"id":"cmpl-1","model":"{engine_model}","choices":[{{"text":"t{index}"}}]}}\n\n'


async def _answer(engine_model: str) -> Any:
    from starlette.responses import StreamingResponse

    return StreamingResponse(_stream(engine_model), media_type="text/event-stream")


async def _no_log(texts: list[str], usage: dict[str, Any]) -> None:
    return None


async def _measure(requests: int) -> dict[str, Any]:
    router = CanaryRouter("bench", BASE, actor_factory=lambda app, base: InProcessActor())
    router.configure([AdapterRoute(name="bot", stable="bot.v1", candidate="bot.v2", weight=0.2)])
    await router.ensure_syncing()
    keys = [f"key-{index:04d}" for index in range(500)]
    choose_ns, bare_ns, wrapped_ns = [], [], []
    for index in range(requests):
        key = keys[index % len(keys)]
        started = time.perf_counter_ns()
        choice = router.choose("bench:bot", key)
        choose_ns.append(time.perf_counter_ns() - started)
        assert choice is not None
        started = time.perf_counter_ns()
        async for _ in (await _answer(choice.engine_model)).body_iterator:
            pass
        bare_ns.append(time.perf_counter_ns() - started)
        started = time.perf_counter_ns()
        opened = await router.open(choice, _answer, lambda error: 500)
        watch = AnswerWatch({}, strip_usage=False, remember=None, log=_no_log, canary=router, opened=opened)
        async for _ in (await watch.watch(opened.answer)).body_iterator:
            pass
        wrapped_ns.append(time.perf_counter_ns() - started)
        if len(router._pending) > 1000:  # the background sync would send these; keep the buffer small
            router._pending.clear()
    overhead = [max(0, wrapped - bare) for wrapped, bare in zip(wrapped_ns, bare_ns, strict=True)]
    total = [c + o for c, o in zip(choose_ns, overhead, strict=True)]
    return {
        "requests": requests,
        "chunks_per_answer": CHUNKS,
        "choose": _percentiles(choose_ns),
        "serve_wrapper": _percentiles(overhead),
        "total": _percentiles(total),
        "target_p50_us": 500,
    }


SECTION = "## Canary split"
ROWS = (
    ("choose", "`choose`: the version this key gets (dict look-up, one BLAKE2b hash)"),
    ("serve_wrapper", "the stream wrapper (signals, `model` renamed in each of 16 chunks) over the bare stream"),
    ("total", "the canary's whole cost on the request path (the two above)"),
)


def render_section(result: dict[str, Any], *, machine: str, date: str, load: float) -> str:
    """The benchmarks.md section for one run."""
    target = result["target_p50_us"]
    lines = [
        SECTION,
        "",
        f"`python tests/bench/canary_bench.py` on {machine}, {date}; load average {load:.2f} (1 min) at "
        f"the start. {result['requests']} requests over 500 API keys on one route (weight 20 %), in process "
        "without Ray (the canary actor is off the request path: a replica syncs with it every few seconds). "
        f"Target (issue 12): the split's ingress overhead ≤ {target} µs p50.",
        "",
        "| piece | p50 µs | p99 µs | mean µs |",
        "|---|---|---|---|",
    ]
    for key, label in ROWS:
        row = result[key]
        lines.append(f"| {label} | {row['p50_us']} | {row['p99_us']} | {row['mean_us']} |")
    met = "yes" if result["total"]["p50_us"] <= target else "**no**"
    lines += ["", f"Total p50 {result['total']['p50_us']} µs against {target} µs: {met}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--out", type=Path, help="replace the canary section of this Markdown file")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    result = asyncio.run(_measure(args.requests))
    print(json.dumps(result, indent=2))
    if args.out:
        from serving_bench_report import replace_section

        cpu = platform.processor() or platform.machine()
        machine = f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        replace_section(args.out, SECTION, render_section(result, machine=machine, date=date, load=load))


if __name__ == "__main__":
    main()
