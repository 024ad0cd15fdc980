"""`GET /metrics` (metrics_server.py): vLLM's engine metrics from every engine replica plus ours, in one text.

- Engine metrics keep vLLM's names (`vllm:num_requests_running`, `vllm:kv_cache_usage_perc`,
  `vllm:time_to_first_token_seconds`, ...); each replica's samples get a `replica` label, the replica's
  Serve id (as in Serve's logs and `serve status`), so the series of two replicas never collide and a
  replica keeps its series when others start or stop. Other families of the replica process are dropped.
- Usage comes from the application's quota actor, so it counts the requests of every ingress
  replica: `bigmodel_key_requests_total{key,code}`, `bigmodel_key_prompt_tokens_total{key}`,
  `bigmodel_key_completion_tokens_total{key}`. `key` is the key's name (never the key);
  `anonymous` when auth is off.
- `bigmodel_metrics_source_up{source}`: 1 when a source's families are in this scrape, 0 when it failed
  (`engine`: vLLM's of every replica; `ingress`, and through it `quota`, `canary`, `feedback`). A failing
  source is left out; the others are served.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENGINE_PREFIX = "vllm:"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape(str(value))}"' for name, value in labels.items()) + "}"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def merge_engine_metrics(replica_texts: Iterable[tuple[str, str]]) -> str:
    """One exposition of the `vllm:` families of all replicas, each sample labelled with its replica."""
    families: dict[str, tuple[str, str, list[str]]] = {}
    for replica, text in replica_texts:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith(ENGINE_PREFIX):
                continue
            _, _, lines = families.setdefault(family.name, (family.type, family.documentation, []))
            for sample in family.samples:
                labels = {**sample.labels, "replica": replica}
                lines.append(f"{sample.name}{_labels(labels)} {_number(sample.value)}")
    out = []
    for name, (kind, documentation, lines) in sorted(families.items()):
        # The parser names a counter's family without `_total`; the text format's TYPE line names the sample
        # (`x_total`), or parsers (Prometheus, prometheus_client) read the samples as untyped, the family empty.
        exposed = f"{name}_total" if kind == "counter" else name
        out.append(f"# HELP {exposed} {documentation}")
        out.append(f"# TYPE {exposed} {kind}")
        out.extend(lines)
    return "\n".join(out) + ("\n" if out else "")


def render_usage(snapshot: Mapping[str, Mapping[str, Any]]) -> str:
    """Per-key usage counters (from `QuotaBook.snapshot()`) in Prometheus text format."""
    requests = [
        f"bigmodel_key_requests_total{_labels({'key': key, 'code': str(code)})} {count}"
        for key, usage in sorted(snapshot.items())
        for code, count in sorted(usage["responses"].items())
    ]
    prompt = [
        f"bigmodel_key_prompt_tokens_total{_labels({'key': key})} {usage['prompt_tokens']}"
        for key, usage in sorted(snapshot.items())
    ]
    completion = [
        f"bigmodel_key_completion_tokens_total{_labels({'key': key})} {usage['completion_tokens']}"
        for key, usage in sorted(snapshot.items())
    ]
    out = [
        "# HELP bigmodel_key_requests_total Requests answered, by API key name and HTTP status.",
        "# TYPE bigmodel_key_requests_total counter",
        *requests,
        "# HELP bigmodel_key_prompt_tokens_total Prompt tokens processed, by API key name.",
        "# TYPE bigmodel_key_prompt_tokens_total counter",
        *prompt,
        "# HELP bigmodel_key_completion_tokens_total Tokens generated, by API key name.",
        "# TYPE bigmodel_key_completion_tokens_total counter",
        *completion,
    ]
    return "\n".join(out) + "\n"


def render_sources(sources: Mapping[str, bool]) -> str:
    """`bigmodel_metrics_source_up{source}` for each source this scrape asked."""
    out = [
        "# HELP bigmodel_metrics_source_up 1 when the source's metrics are in this scrape, 0 when it failed.",
        "# TYPE bigmodel_metrics_source_up gauge",
        *(f"bigmodel_metrics_source_up{_labels({'source': name})} {int(up)}" for name, up in sorted(sources.items())),
    ]
    return "\n".join(out) + "\n"
