"""Markdown for `serving_bench.py` results, and replacing only our section of docs/benchmarks.md."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

THROUGHPUT_RATIO_TARGET = 0.95  # (c) requests/s at least this share of (b)
TTFT_EXTRA_TARGET_MS = 3.0  # (c) TTFT p50 at most this much above (b)
QUOTA_TARGET_MS = 0.5  # the quota check's p50
SERVERS = {
    "a": "(a) `vllm serve`",
    "b": "(b) Ray Serve LLM `build_openai_app`",
    "c": "(c) ours, keys + quotas",
}


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:g}" if isinstance(value, float | int) else str(value)


def _check(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator else float("nan")


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def model_section(run: dict[str, Any]) -> list[str]:
    """One model: the three servers at each concurrency, then the targets and the quota check."""
    name = run["model"]
    if "failed" in run:
        return [
            f"### Model `{name}`",
            "",
            f"The run of {run.get('date', 'n/a')} failed (exit code {run['failed']}); see the console output.",
            "",
        ]
    kv = run.get("engine", {}).get("kv_cache_memory_bytes")
    lines = [
        f"### Model `{name}` ({run['parameters'] / 1e6:.1f} M parameters, random weights)",
        "",
        f"Measured {run.get('date', 'n/a')}; load average {_fmt(run.get('load_average_before'))} before the "
        f"servers started{f', KV cache {_mib(kv)} per server' if kv else ''}. Servers ready {run['ready_s']} s "
        f"after the start; the whole model took {run['seconds']} s.",
        "",
    ]
    rows, checks = [], []
    for concurrency, by_server in run["load"].items():
        load = by_server.get("load_average")
        for server, label in SERVERS.items():
            stats = by_server[server]
            rows.append(
                [
                    concurrency,
                    label,
                    stats["rps"],
                    stats["ttft_p50_ms"],
                    stats["ttft_p99_ms"],
                    stats["itl_p50_ms"],
                    stats["itl_p99_ms"],
                    stats["errors"],
                    load,
                ]
            )
        a, b, c = by_server["a"], by_server["b"], by_server["c"]
        ratio_cb = _ratio(c["rps"], b["rps"])
        extra_ttft = round(c["ttft_p50_ms"] - b["ttft_p50_ms"], 2)
        checks.append(
            [
                concurrency,
                ratio_cb,
                _check(ratio_cb >= THROUGHPUT_RATIO_TARGET),
                _spread(by_server.get("round_rps_ratio")),
                extra_ttft,
                _check(extra_ttft <= TTFT_EXTRA_TARGET_MS),
                _spread(by_server.get("round_ttft_diff_ms")),
                _ratio(c["rps"], a["rps"]),
            ]
        )
    header = ["concurrency", "server", "req/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms", "errors"]
    lines += _table([*header, "load avg (max)"], rows)
    lines += ["", "Targets: (c) ≥ 0.95 × (b) requests/s and TTFT p50 ≤ (b) + 3 ms; (c)/(a) for reference.", ""]
    header = ["concurrency", "(c)/(b) req/s", "≥ 0.95", "round by round: median (min … max)"]
    header += ["(c) − (b) TTFT p50 ms", "≤ 3 ms", "round by round: median (min … max)", "(c)/(a) req/s"]
    lines += _table(header, checks)
    lines += ["", *ingress_alone_lines(run.get("ingress_alone")), "", *quota_lines(run["quota"]), ""]
    return lines


def _spread(values: list[float] | None) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    return f"{_fmt(round(statistics.median(ordered), 2))} ({_fmt(ordered[0])} … {_fmt(ordered[-1])})"


ALONE_HEADER = ["concurrency", "(b) TTFT p50 ms", "(c) TTFT p50 ms", "(c) − (b) ms", "≤ 3 ms", "(b) p99", "(c) p99"]
ALONE_HEADER += ["(c) − (b) to the end, p50 ms", "requests each"]


def ingress_alone_lines(alone: dict[str, Any] | None) -> list[str]:
    """The two ingresses in one process with the engine replaced by a stand-in (ingress_bench.py)."""
    if not alone:
        return []
    if "error" in alone:
        return [f"Ingress alone: not measured ({alone['error']})."]
    rows = [
        [
            concurrency,
            row["b"]["ttft_p50_ms"],
            row["c"]["ttft_p50_ms"],
            row["diff_p50_ms"],
            _check(row["diff_p50_ms"] <= TTFT_EXTRA_TARGET_MS),
            row["b"]["ttft_p99_ms"],
            row["c"]["ttft_p99_ms"],
            row.get("total_diff_p50_ms"),
            row["c"]["requests"],
        ]
        for concurrency, row in alone["load"].items()
    ]
    return [
        "Ingress alone (ingress_bench.py): (b) Ray's `OpenAiIngress` and (c) ours behind its guard, keys and quotas "
        "on, in one process on one event loop, both streaming from the same stand-in engine (first text after "
        f"{alone['first_token_s'] * 1000:g} ms, then one every {alone['inter_token_s'] * 1000:g} ms, "
        f"{alone['tokens']} texts): what the ingress itself adds to TTFT, without the engine's steps.",
        "",
        *_table(ALONE_HEADER, rows),
    ]


def quota_lines(quota: dict[str, Any]) -> list[str]:
    if "error" in quota:
        return [f"Quota check: not measured ({quota['error']})."]
    if "admit_p50_ms" not in quota:  # runs from before the leases: one actor call per request
        return [
            f"Quota check (one round trip to the quota actor per request, {QUOTA_TARGET_MS} ms target): p50 "
            f"{_fmt(quota['actor_p50_ms'])} ms ({_check(quota['actor_p50_ms'] <= QUOTA_TARGET_MS)}), p99 "
            f"{_fmt(quota['actor_p99_ms'])} ms."
        ]
    return [
        f"Quota check: the ingress' `admit()`, {quota.get('calls', 'n/a')} calls each, load average "
        f"{_fmt(quota.get('load_average'))} ({QUOTA_TARGET_MS} ms target for p50):",
        "",
        *_table(
            ["path", "p50 ms", "p99 ms", f"≤ {QUOTA_TARGET_MS} ms"],
            [
                [
                    f"admitted from the replica's lease ({quota['admit_actor_calls']} actor calls)",
                    quota["admit_p50_ms"],
                    quota["admit_p99_ms"],
                    _check(quota["admit_p50_ms"] <= QUOTA_TARGET_MS),
                ],
                ["lease empty: round trip to the quota actor", quota["miss_p50_ms"], quota["miss_p99_ms"], ""],
                ["token-bucket arithmetic alone (in process)", quota["in_process_p50_ms"], None, ""],
            ],
        ),
    ]


def render_section(
    runs: list[dict[str, Any]], *, machine: str, engine_kwargs: dict[str, Any], method: dict[str, Any]
) -> str:
    engine = ", ".join(f"{key}={value}" for key, value in engine_kwargs.items())
    lines = [
        "## Serving path",
        "",
        f"`make bench` (`python tests/bench/serving_bench.py`) on {machine}. Each model is loaded by three servers",
        "at once on 127.0.0.1, with the same vLLM engine arguments "
        f"({engine}, and a KV cache sized for the model: `kv_cache_memory_bytes`): (a) vLLM's own `vllm serve`, "
        "the engine's floor; (b) Ray Serve LLM's stock `build_openai_app` with the `LLMConfig` our app derives; "
        "(c) our application as the operator renders it, API keys and per-key quotas on (limits high enough "
        "never to refuse, so every request pays for the key lookup and the quota check). Streamed "
        "`/v1/completions`, 16 tokens each (`ignore_eos`), greedy; per server and round "
        f"{method['solo_requests']} requests at concurrency 1, 2 × concurrency at 8 and 32; {method['rounds']} "
        "rounds, one in each order of the three servers (each server's turn follows each other server's "
        f"equally often), every turn after a {method['settle_s']:g} s pause. TTFT is the time to the "
        "first streamed text, ITL the gap between texts. The machine is shared: the load average (1 min, "
        "highest seen during the row) is next to the numbers; compare servers within one row, measured "
        "side by side. Speed is measured here, never asserted in tests. The round-by-round columns show how far "
        "(c)/(b) and (c) − (b) swing between rounds of the same run: from 8 concurrent requests on, a CPU "
        "engine starts a request's first token only at the next of its steps (tens of ms: ITL p50), so the TTFT "
        "difference is set by how arrivals fall on steps, either way; the ingress-alone table below each model "
        "measures what the ingress itself adds.",
        "",
    ]
    for run in runs:
        lines += model_section(run)
    return "\n".join(lines)


def replace_section(path: Path, heading: str, section: str) -> None:
    """Put `section` in place of the `heading` section of `path` (or append it); keep the rest."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        new_text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new_text = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new_text)
