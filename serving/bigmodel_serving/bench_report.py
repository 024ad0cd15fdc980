"""Markdown for `bench.py` results, and replacing only our section of docs/benchmarks.md."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TARGET_P50_MS, TARGET_P99_MS, TARGET_REJECT_MS = 2.0, 10.0, 50.0


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:g}"


def _check(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(_fmt(cell) if isinstance(cell, float) else str(cell) for cell in row) + " |" for row in rows
    ]
    return lines


def _mode_section(run: dict[str, Any]) -> list[str]:
    env = " ".join(f"{key}={value}" for key, value in run["env"].items()) or "(Ray defaults)"
    lines = [f"### Mode `{run['mode']}`: {env}", ""]
    if "failed" in run or not run.get("direct"):
        return [*lines, f"The run failed (exit code {run.get('failed')}); see the console output.", ""]
    http, direct = run["http"], run["direct"]
    seq = http["sequential"]
    floor_get, floor, app, models = seq["floor_get"], seq["floor_post"], seq["app_completion"], seq["app_models"]
    extra_p50 = round(app["latency_p50_ms"] - floor["latency_p50_ms"], 2)
    extra_p99 = round(app["latency_p99_ms"] - floor["latency_p99_ms"], 2)
    lines += ["Sequential requests (concurrency 1, 400 rounds, the four targets interleaved): the path overhead.", ""]
    lines += _table(
        ["request", "p50 ms", "p99 ms", "errors"],
        [
            [
                "(b) floor: bare Serve deployment, GET, constant answer",
                floor_get["latency_p50_ms"],
                floor_get["latency_p99_ms"],
                floor_get["errors"],
            ],
            [
                "(b) floor: same, POST with the completion body (read)",
                floor["latency_p50_ms"],
                floor["latency_p99_ms"],
                floor["errors"],
            ],
            [
                "(c) our app, stub engine, POST /v1/completions max_tokens=1",
                app["latency_p50_ms"],
                app["latency_p99_ms"],
                app["errors"],
            ],
            ["(c) our app, GET /v1/models", models["latency_p50_ms"], models["latency_p99_ms"], models["errors"]],
            ["**added by our app** (completion - POST floor)", extra_p50, extra_p99, ""],
        ],
    )
    asgi = direct.get("asgi_us", {})
    lines += [
        "",
        f"Target <= {TARGET_P50_MS:g} ms p50: {_check(extra_p50 <= TARGET_P50_MS)}; "
        f"<= {TARGET_P99_MS:g} ms p99: {_check(extra_p99 <= TARGET_P99_MS)}. "
        f"Our ASGI app alone, called in-process: {_fmt(asgi.get('completion'))} µs per completion, "
        f"{_fmt(asgi.get('models'))} µs per model list.",
        "",
    ]
    rows = []
    for concurrency, pair in http["concurrent"].items():
        for name, stats in pair.items():
            rows.append(
                [
                    concurrency,
                    name,
                    stats["requests"],
                    stats["rps"],
                    stats["latency_p50_ms"],
                    stats["latency_p99_ms"],
                    stats["errors"],
                ]
            )
    lines += ["Throughput (non-streaming POSTs; `app_completion` = our app with the stub engine, 1 token):", ""]
    lines += _table(["concurrency", "target", "requests", "req/s", "p50 ms", "p99 ms", "non-200"], rows)
    lines += [
        "",
        "Streaming, 16 tokens: (a) engine in-process vs (c) over HTTP. "
        "Stub engine: TTFT 20 ms, 5 ms per token by construction.",
        "",
    ]
    rows = []
    for engine, key in (("stub", "stream_stub"), ("tiny", "stream_tiny")):
        for concurrency in http[key]:
            a, c = direct[engine][str(concurrency)], http[key][concurrency]
            rows.append(
                [
                    engine,
                    concurrency,
                    a["ttft_p50_ms"],
                    c["ttft_p50_ms"],
                    a["ttft_p99_ms"],
                    c["ttft_p99_ms"],
                    a["itl_p50_ms"],
                    c["itl_p50_ms"],
                    a["itl_p99_ms"],
                    c["itl_p99_ms"],
                    c["rps"],
                    c["errors"],
                ]
            )
    lines += _table(
        [
            "engine",
            "conc.",
            "TTFT p50 (a)",
            "TTFT p50 (c)",
            "TTFT p99 (a)",
            "TTFT p99 (c)",
            "ITL p50 (a)",
            "ITL p50 (c)",
            "ITL p99 (a)",
            "ITL p99 (c)",
            "req/s (c)",
            "non-200 (c)",
        ],
        rows,
    )
    over = http["overload"]
    reject_ok = not math.isnan(over["reject_max_ms"]) and over["reject_max_ms"] <= TARGET_REJECT_MS
    lines += [
        "",
        f"Overload (1 generating + 1 queued per replica, 3 s per request, 4 sent first, then 20 probes): "
        f"{over['rejected']}/{over['probes']} rejected with {over['statuses']}, Retry-After {over['retry_after']}, "
        f"answered in p50 {_fmt(over['reject_p50_ms'])} ms, max {_fmt(over['reject_max_ms'])} ms "
        f"(target <= {TARGET_REJECT_MS:g} ms: {_check(reject_ok)}).",
        "",
    ]
    below = sum(stats["errors"] for pair in http["concurrent"].values() for stats in pair.values())
    below += sum(stats["errors"] for key in ("stream_stub", "stream_tiny") for stats in http[key].values())
    lines += [f"Errors below saturation: {below} (target 0: {_check(below == 0)}). Run took {run['seconds']} s.", ""]
    return lines


def render_section(runs: list[dict[str, Any]], *, machine: str, date: str) -> str:
    lines = [
        "## Serving path",
        "",
        f"Measured {date} on {machine} with `python -m bigmodel_serving.bench` (`make bench`).",
        "Client, Ray proxy and replicas share the same cores over loopback, so absolute numbers are",
        "pessimistic; the floor and our app are measured in the same run, with the same client.",
        "",
    ]
    lines += _findings(runs)
    for run in runs:
        lines += _mode_section(run)
    return "\n".join(lines).rstrip() + "\n"


def _findings(runs: list[dict[str, Any]]) -> list[str]:
    """A few comparisons across the table below, computed from this run."""
    ok = {run["mode"]: run for run in runs if "failed" not in run and run.get("direct")}
    if not ok:
        return []
    any_run = next(iter(ok.values()))
    asgi = any_run["direct"].get("asgi_us", {})
    lines = [
        "Reading the numbers:",
        "",
        f"- Our code costs about {_fmt(asgi.get('completion'))} µs of CPU per completion (the ASGI app called "
        "in-process); the rest of the gap to the floor is scheduling on the shared cores.",
        "- The tiny model's TTFT grows with concurrency because the transformers (dev) engine generates one "
        "request at a time; its req/s is the engine's limit on these cores, not the path's.",
    ]
    if "default" in ok and "haproxy" in ok:
        default, haproxy = ok["default"]["http"], ok["haproxy"]["http"]

        def seq(http: dict[str, Any], name: str) -> float:
            return float(http["sequential"][name]["latency_p50_ms"])

        def conc(http: dict[str, Any], key: str, field: str) -> float:
            return float(http[key]["32"][field])

        lines.append(
            "- Ray 2.60's HAProxy ingress (`RAY_SERVE_ENABLE_HA_PROXY=1` + `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`) "
            f"takes the POST floor from {_fmt(seq(default, 'floor_post'))} to {_fmt(seq(haproxy, 'floor_post'))} ms "
            f"p50 and our completion from {_fmt(seq(default, 'app_completion'))} to "
            f"{_fmt(seq(haproxy, 'app_completion'))} ms; at concurrency 32 the stub's TTFT p50 goes from "
            f"{_fmt(conc(default, 'stream_stub', 'ttft_p50_ms'))} to "
            f"{_fmt(conc(haproxy, 'stream_stub', 'ttft_p50_ms'))} ms and the tiny model's req/s from "
            f"{_fmt(conc(default, 'stream_tiny', 'rps'))} to "
            f"{_fmt(conc(haproxy, 'stream_tiny', 'rps'))}. Auth, limits and the 429 path behave the same. "
            "It is HTTP-only (terminate TLS in front of it)."
        )
    return [*lines, ""]


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
