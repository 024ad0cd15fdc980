"""Prometheus metrics of the operator itself (text format, no client library): API calls by verb,
reconciles by kind and outcome with their duration, and the objects it tracks."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
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


def render(operator: Operator) -> str:
    lines = [
        "# HELP bigmodel_operator_api_requests_total Kubernetes API requests made by the operator.",
        "# TYPE bigmodel_operator_api_requests_total counter",
    ]
    for verb, n in sorted({**operator.kube.reads, **operator.kube.writes}.items()):
        lines.append(f'bigmodel_operator_api_requests_total{{verb="{verb}"}} {n}')
    lines += [
        "# HELP bigmodel_operator_reconciles_total Reconciles run, by kind and result.",
        "# TYPE bigmodel_operator_reconciles_total counter",
    ]
    for (kind, result), n in sorted(operator.stats.count.items()):
        lines.append(f'bigmodel_operator_reconciles_total{{kind="{kind}",result="{result}"}} {n}')
    lines += [
        "# HELP bigmodel_operator_reconciles_skipped_total Runs skipped: nothing the last clean run read had moved.",
        "# TYPE bigmodel_operator_reconciles_skipped_total counter",
    ]
    for kind, n in sorted(operator.stats.skipped.items()):
        lines.append(f'bigmodel_operator_reconciles_skipped_total{{kind="{kind}"}} {n}')
    lines += [
        "# TYPE bigmodel_operator_reconciles_running gauge",
        f"bigmodel_operator_reconciles_running {operator.runner.running}",
        "# HELP bigmodel_operator_reconciles_backing_off Objects whose last reconcile failed, waiting to retry.",
        "# TYPE bigmodel_operator_reconciles_backing_off gauge",
        f"bigmodel_operator_reconciles_backing_off {operator.runner.backing_off()}",
        "# HELP bigmodel_operator_reconciles_waiting Objects waiting for an earlier object's children to go.",
        "# TYPE bigmodel_operator_reconciles_waiting gauge",
        f"bigmodel_operator_reconciles_waiting {operator.runner.waiting()}",
    ]
    lines += ["# TYPE bigmodel_operator_reconcile_seconds_total counter"]
    for kind, seconds in sorted(operator.stats.seconds.items()):
        lines.append(f'bigmodel_operator_reconcile_seconds_total{{kind="{kind}"}} {seconds:.6f}')
    lines += [
        "# TYPE bigmodel_operator_events_dropped_total counter",
        f"bigmodel_operator_events_dropped_total {operator.events_dropped}",
        "# TYPE bigmodel_operator_events_queued gauge",
        f"bigmodel_operator_events_queued {operator.events.qsize()}",
    ]
    lines += [
        "# HELP bigmodel_operator_remembered_entries Entries kept per object (cache, runner, per-uid memory).",
        "# TYPE bigmodel_operator_remembered_entries gauge",
        f"bigmodel_operator_remembered_entries {operator.remembered()}",
    ]
    lines += cost_lines(operator.state.written_status)
    lines += ["# TYPE bigmodel_operator_tracked_objects gauge"]
    for kind in operator.state.kinds():
        lines.append(f'bigmodel_operator_tracked_objects{{kind="{kind}"}} {operator.state.count(kind)}')
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
            samples.append(f"{metric}{{{labels}}} {value}")
        if samples:
            lines += [f"# HELP {metric} {text}", f"# TYPE {metric} counter", *samples]
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
