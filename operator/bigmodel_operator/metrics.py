"""Prometheus metrics of the operator itself (text format, no client library): API calls by verb,
reconciles by kind and outcome with their duration, and the objects it tracks."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bigmodel_operator.reconcile.runner import RetryLaterError

if TYPE_CHECKING:
    from bigmodel_operator.handlers import Operator


class ReconcileStats:
    """Counts and total seconds of reconciles, by (kind, result), and the runs skipped as settled."""

    def __init__(self) -> None:
        self.count: Counter[tuple[str, str]] = Counter()
        self.seconds: dict[str, float] = {}
        self.skipped: Counter[str] = Counter()

    async def timed(self, kind: str, work: Callable[[], Awaitable[None]]) -> None:
        start = time.perf_counter()
        result = "error"
        try:
            await work()
            result = "ok"
        except RetryLaterError:
            result = "waiting"
            raise
        finally:
            self.count[(kind, result)] += 1
            self.seconds[kind] = self.seconds.get(kind, 0.0) + time.perf_counter() - start


def family(name: str, type_: str, text: str | None, samples: Iterable[tuple[str, object]]) -> list[str]:
    """One metric family in the text format: HELP (when `text`) and TYPE, then `name{labels} value` per
    (labels, value) sample; `labels` is the inside of the braces, empty for none."""
    head = [f"# HELP {name} {text}"] if text else []
    lines = [f"{name}{{{labels}}} {value}" if labels else f"{name} {value}" for labels, value in samples]
    return [*head, f"# TYPE {name} {type_}", *lines]


def render(operator: Operator) -> str:
    stats, runner, state = operator.stats, operator.runner, operator.state
    requests = sorted({**operator.kube.reads, **operator.kube.writes}.items())
    lines = [
        *family(
            "bigmodel_operator_api_requests_total",
            "counter",
            "Kubernetes API requests made by the operator.",
            ((f'verb="{verb}"', n) for verb, n in requests),
        ),
        *family(
            "bigmodel_operator_reconciles_total",
            "counter",
            "Reconciles run, by kind and result.",
            ((f'kind="{kind}",result="{result}"', n) for (kind, result), n in sorted(stats.count.items())),
        ),
        *family(
            "bigmodel_operator_reconciles_skipped_total",
            "counter",
            "Runs skipped: nothing the last clean run read had moved.",
            ((f'kind="{kind}"', n) for kind, n in sorted(stats.skipped.items())),
        ),
        *family("bigmodel_operator_reconciles_running", "gauge", None, [("", runner.running)]),
        *family(
            "bigmodel_operator_reconciles_backing_off",
            "gauge",
            "Objects whose last reconcile failed, waiting to retry.",
            [("", runner.backing_off())],
        ),
        *family(
            "bigmodel_operator_reconciles_waiting",
            "gauge",
            "Objects waiting for an earlier object's children to go.",
            [("", runner.waiting())],
        ),
        *family(
            "bigmodel_operator_reconcile_seconds_total",
            "counter",
            None,
            ((f'kind="{kind}"', f"{seconds:.6f}") for kind, seconds in sorted(stats.seconds.items())),
        ),
        *family("bigmodel_operator_events_dropped_total", "counter", None, [("", operator.events_dropped)]),
        *family("bigmodel_operator_events_queued", "gauge", None, [("", operator.events.qsize())]),
        *family(
            "bigmodel_operator_remembered_entries",
            "gauge",
            "Entries kept per object (cache, runner, per-uid memory).",
            [("", operator.remembered())],
        ),
        *cost_lines(state.written_status),
        *family(
            "bigmodel_operator_tracked_objects",
            "gauge",
            None,
            ((f'kind="{kind}"', state.count(kind)) for kind in state.kinds()),
        ),
    ]
    return "\n".join(lines) + "\n"


COST_METRICS = (
    ("gpuSeconds", "bigmodel_gpu_seconds_total", "GPU-seconds held by a BigModel's replica pods."),
    ("idleGpuSeconds", "bigmodel_idle_gpu_seconds_total", "Of those, GPU-seconds with no request in flight."),
    ("cpuSeconds", "bigmodel_cpu_seconds_total", "CPU-core-seconds held by a BigModel's replica pods."),
    ("idleCpuSeconds", "bigmodel_idle_cpu_seconds_total", "Of those, with no request in flight."),
    ("promptTokens", "bigmodel_prompt_tokens_total", "Prompt tokens a BigModel processed."),
    ("completionTokens", "bigmodel_completion_tokens_total", "Completion tokens a BigModel generated."),
    ("cost", "bigmodel_cost_total", "What a BigModel's replicas cost at the configured prices (label: currency)."),
)


def cost_lines(written: dict[tuple[str, str, str], dict[str, Any]]) -> list[str]:
    """Per-BigModel cost counters from the status.cost the operator last wrote (status/cost_accounting.py)."""
    costs = {
        (namespace, name): status.get("cost") or {}
        for (kind, namespace, name), status in sorted(written.items())
        if kind == "BigModel" and status.get("cost")
    }
    lines: list[str] = []
    for field, metric, text in COST_METRICS:
        samples = []
        for (namespace, name), cost in costs.items():
            value = (cost.get("total") or {}).get(field)
            if value is None:
                continue
            labels = f'namespace="{namespace}",bigmodel="{name}"'
            if field == "cost":
                labels += f',currency="{cost.get("currency", "")}"'
            samples.append((labels, value))
        if samples:
            lines += family(metric, "counter", text, samples)
    return lines


async def serve_metrics(operator: Operator, address: str) -> web.AppRunner:
    """Serve GET /metrics at host:port."""
    host, _, port = address.rpartition(":")

    async def handler(_: web.Request) -> web.Response:
        return web.Response(text=render(operator), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
    return runner
