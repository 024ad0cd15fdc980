"""Prometheus metrics of one replica, served at GET /metrics.

Each app instance has its own registry (so tests and benchmarks can run several apps in one
process). Label values are bounded: `model` and `adapter` are only ever names this server serves
(empty when the request named none it knows), `route` is one of the served routes or `other`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # no `*_created` series: they double the output and nobody graphs them

ROUTES = ("/v1/models", "/v1/chat/completions", "/v1/completions", "/health", "/metrics")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def route_label(path: str) -> str:
    return path if path in ROUTES else "other"


class ServingMetrics:
    """Counters, histograms and gauges for requests, errors, TTFT, tokens and queue depth."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("route", "code", "model", "adapter")
        self.requests = Counter(
            "bigmodel_requests", "HTTP requests answered, by route and status code.", labels, registry=self.registry
        )
        self.errors = Counter(
            "bigmodel_request_errors",
            "Requests answered with a 4xx or 5xx, by status code.",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "bigmodel_request_duration_seconds",
            "Time from request to the last byte of the answer.",
            ("route", "model", "adapter"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "bigmodel_time_to_first_token_seconds",
            "Time from request to the first generated token.",
            ("model", "adapter"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "bigmodel_prompt_tokens", "Prompt tokens processed.", ("model", "adapter"), registry=self.registry
        )
        self.completion_tokens = Counter(
            "bigmodel_completion_tokens", "Tokens generated.", ("model", "adapter"), registry=self.registry
        )
        self.queue_depth = Gauge(
            "bigmodel_queue_depth", "Requests waiting for a generation slot in this replica.", registry=self.registry
        )
        self.ongoing = Gauge(
            "bigmodel_ongoing_requests", "Requests generating now in this replica.", registry=self.registry
        )

    def observe_request(self, path: str, code: int, model: str, adapter: str, seconds: float) -> None:
        route = route_label(path)
        self.requests.labels(route, str(code), model, adapter).inc()
        if code >= 400:
            self.errors.labels(route, str(code), model, adapter).inc()
        self.latency.labels(route, model, adapter).observe(seconds)

    def observe_tokens(self, model: str, adapter: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens.labels(model, adapter).inc(prompt_tokens)
        self.completion_tokens.labels(model, adapter).inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
