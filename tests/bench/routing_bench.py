"""Routing benchmark (`make bench`): Serve's default router against the prefix-cache-aware one, same load.

    python tests/bench/routing_bench.py [--model m8|tiny|m100] [--rounds 2] [--requests 192] [--concurrency 8] [--no-write]

One application as the operator renders it (`bigmodel serve`'s rendering of a BigModel manifest) with two
engine replicas of a generated model on vLLM's CPU build, through our ingress: `m8` (~8 M parameters, the
default: a 1,500-token prefill costs about a second on a CPU core, so a cache hit saves real work, as a long
prompt's does on a real model's GPU), `tiny` (0.5 M parameters: its prefill is so cheap that a cache hit saves
almost nothing) or `m100` (~100 M: minutes per turn of prefills on two cores, too slow for `make bench`). The
engine runs float32 (this bench's machines have AVX2 and no native bf16; float32 also fixes the KV cache's
bytes per token that the cache is sized by). The workload is shared-prefix
chat: 16 system prompts of ~1,500 tokens each, 64 users (user u always uses system prompt u mod 16), each
request one user's short question (~20 tokens), 8 streamed tokens back (`ignore_eos`), greedy; a closed loop
of `--concurrency` clients, each sending its next request when the last one ended, users in a seeded random
order. Each replica's KV cache holds 9 of the 16 prompts (the sizes are printed and written), so one replica
cannot keep every prefix but the two together can: where routing decides the hit rate.

The two policies take turns on the same application (a redeploy with the other `spec.routing.policy`; with Ray
2.60 that restarts the replicas, so every turn starts on fresh engines), in rounds that alternate which goes
first; before each turn vLLM's prefix caches are emptied (`reset_prefix_cache` on every replica) and each
round uses a new set of system prompts, so neither policy finds prefixes the other one warmed. Prefix-cache
hit rate is vLLM's own `vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total` (tokens), summed over
the replicas, from the application's metrics listener (its own port: the serving port has no /metrics) before
and after each turn; a turn whose counters are missing fails instead of printing `nan`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "bench"))

SYSTEM_PROMPTS = 16
PROMPT_TOKENS = 1500
USERS = 64
MAX_TOKENS = 8
REPLICAS = 2
PREFIXES_PER_REPLICA = 9  # KV cache of one replica: 9 of the 16 prompts
MAX_MODEL_LEN = 2048
POLICIES = ("leastLoaded", "prefixCache")
LABELS = {"leastLoaded": "default (Serve's power of two)", "prefixCache": "prefix-aware (PrefixCacheAffinityRouter)"}
TARGET_TTFT = 0.6
TARGET_RATE = 1.5
RAW = REPO / ".bench" / "routing.json"
_TEXT = (
    "the operator watches resources in the cluster and reconciles desired state with actual state serving a model "
    "means loading its weights reading requests and streaming tokens back to the client fine tuning adapts a model "
    "to a task with a small dataset replicas queues latency throughput adapters prompts completions data models"
)
_WORDS = _TEXT.split(" ")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kv_bytes_per_token(config: dict[str, Any]) -> int:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    # K and V in float32, the dtype the manifest asks for. With dtype auto vLLM's CPU build stores bf16, and a
    # cache sized by 4 bytes held twice the tokens (logged: 28,032 instead of 14,024; every prefix fit).
    return int(2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 4)


def system_prompts(tokenizer: Any, round_index: int) -> list[str]:
    """16 distinct texts of ~PROMPT_TOKENS tokens each, different in every round (seeded)."""
    prompts = []
    for index in range(SYSTEM_PROMPTS):
        rng = random.Random(f"round{round_index}-prompt{index}")
        words = [f"Assistant {round_index}-{index} rules:"]
        while len(tokenizer.encode(" ".join(words))) < PROMPT_TOKENS:
            words += [rng.choice(_WORDS) for _ in range(50)]
        prompts.append(" ".join(words))
    return prompts


def workload(prompts: list[str], requests: int, round_index: int) -> list[list[dict[str, str]]]:
    rng = random.Random(f"round{round_index}-order")
    out = []
    for number in range(requests):
        user = rng.randrange(USERS)
        question = f"User {user} asks question {number}: what is the state of replica {rng.randrange(100)}?"
        out.append(
            [{"role": "system", "content": prompts[user % SYSTEM_PROMPTS]}, {"role": "user", "content": question}]
        )
    return out


def manifest(model_dir: Path, kv_bytes: int, policy: str, served: str) -> dict[str, Any]:
    return {
        "apiVersion": "bigmodel.io/v1alpha1",
        "kind": "BigModel",
        "metadata": {"name": "routing-bench"},
        "spec": {
            "model": {"uri": model_dir.as_uri(), "servedName": served},
            "engine": {
                "maxModelLen": MAX_MODEL_LEN,
                "dtype": "float32",
                "maxNumSeqs": 16,
                "extraArgs": [f"--kv-cache-memory-bytes={kv_bytes}", "--enforce-eager"],
            },
            "resources": {"gpu": {"count": 0}},
            "scaling": {"replicas": REPLICAS},
            "routing": {"policy": policy},
            "auth": {"mode": "none"},
        },
    }


def application(model_dir: Path, kv_bytes: int, policy: str, metrics_port: int, served: str) -> dict[str, Any]:
    """What the operator renders for the manifest, with the replica count `bigmodel serve` pins to 1 put back
    and the metrics listener on `metrics_port` (the same for every redeploy)."""
    from bigmodel_operator.local import local_application

    app = local_application(manifest(model_dir, kv_bytes, policy, served))
    app["args"]["metrics"] = {"host": "127.0.0.1", "port": metrics_port}
    engine = next(d for d in app["deployments"] if d["name"] == "BigModelEngine")
    engine["autoscaling_config"].update(min_replicas=REPLICAS, max_replicas=REPLICAS)
    return app


def _counters(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits"):
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    totals[family.name] = totals.get(family.name, 0.0) + sample.value
    missing = {"vllm:prefix_cache_queries", "vllm:prefix_cache_hits"} - set(totals)
    if missing:
        raise RuntimeError(f"the engine metrics have no {sorted(missing)}: is this the metrics listener?")
    return totals


async def _scrape(session: Any, metrics_url: str, replicas: int = REPLICAS) -> dict[str, float]:
    """The prefix-cache counters once every engine replica reports them (after a redeploy the metrics
    listener may not see the new replicas for a few seconds)."""
    deadline = time.monotonic() + 120
    while True:
        text = await (await session.get(metrics_url)).text()
        try:
            totals = _counters(text)
            if text.count("vllm:prefix_cache_queries_total{") >= replicas:
                return totals
            error: Exception = RuntimeError(f"fewer than {replicas} replicas in {metrics_url}")
        except RuntimeError as missing:
            error = missing
        if time.monotonic() > deadline:
            raise error
        await asyncio.sleep(2)


async def run_turn(
    url: str, metrics_url: str, conversations: list[list[dict[str, str]]], concurrency: int, served: str
) -> dict[str, Any]:
    import aiohttp

    ttfts: list[float] = []
    errors = 0
    queue = list(conversations)
    body = {"model": served, "max_tokens": MAX_TOKENS, "ignore_eos": True, "temperature": 0, "stream": True}

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while queue:
            messages = queue.pop()
            started = time.perf_counter()
            first = None
            async with session.post(f"{url}/v1/chat/completions", json={**body, "messages": messages}) as response:
                if response.status != 200:
                    errors += 1
                    await response.read()
                    continue
                async for line in response.content:
                    if first is None and line.startswith(b"data: {") and b'"content":"' in line:
                        first = time.perf_counter() - started
            if first is None:
                errors += 1
            else:
                ttfts.append(first)

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        before = await _scrape(session, metrics_url)
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        after = await _scrape(session, metrics_url)
    queries = after.get("vllm:prefix_cache_queries", 0) - before.get("vllm:prefix_cache_queries", 0)
    hits = after.get("vllm:prefix_cache_hits", 0) - before.get("vllm:prefix_cache_hits", 0)
    ordered = sorted(ttfts)
    return {
        "requests": len(conversations),
        "errors": errors,
        "seconds": elapsed,
        "rate": len(ttfts) / elapsed,
        "ttft_p50": statistics.median(ordered) if ordered else float("nan"),
        "ttft_p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan"),
        "hit_rate": hits / queries if queries else float("nan"),
        "load": os.getloadavg()[0],
    }


def _reset_prefix_caches(app_name: str) -> None:
    from ray import serve

    handle = serve.get_deployment_handle("BigModelEngine", app_name=app_name)
    handle.broadcast("reset_prefix_cache").results()


def _table(turns: list[dict[str, Any]]) -> str:
    rows = [
        "| policy | round | req/s | TTFT p50 ms | TTFT p99 ms | prefix-cache hit rate | errors | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for turn in turns:
        rows.append(
            f"| {LABELS[turn['policy']]} | {turn['round']} | {turn['rate']:.2f} | {turn['ttft_p50'] * 1000:.1f} | "
            f"{turn['ttft_p99'] * 1000:.1f} | {turn['hit_rate']:.1%} | {turn['errors']} | {turn['load']:.1f} |"
        )
    return "\n".join(rows)


def _summary(turns: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    by: dict[str, dict[str, list[float]]] = {
        p: {"rate": [], "ttft_p50": [], "ttft_p99": [], "hit": []} for p in POLICIES
    }
    for turn in turns:
        for key, field in (("rate", "rate"), ("ttft_p50", "ttft_p50"), ("ttft_p99", "ttft_p99"), ("hit", "hit_rate")):
            by[turn["policy"]][key].append(turn[field])
    med = {p: {k: statistics.median(v) for k, v in values.items()} for p, values in by.items()}
    rounds = sorted({t["round"] for t in turns})
    ttft_ratios = [
        next(t["ttft_p50"] for t in turns if t["round"] == r and t["policy"] == "prefixCache")
        / next(t["ttft_p50"] for t in turns if t["round"] == r and t["policy"] == "leastLoaded")
        for r in rounds
    ]
    rate_ratios = [
        next(t["rate"] for t in turns if t["round"] == r and t["policy"] == "prefixCache")
        / next(t["rate"] for t in turns if t["round"] == r and t["policy"] == "leastLoaded")
        for r in rounds
    ]
    ttft_ratio = med["prefixCache"]["ttft_p50"] / med["leastLoaded"]["ttft_p50"]
    rate_ratio = med["prefixCache"]["rate"] / med["leastLoaded"]["rate"]
    met = ttft_ratio <= TARGET_TTFT or rate_ratio >= TARGET_RATE
    lines = [
        "| policy (median of rounds) | req/s | TTFT p50 ms | TTFT p99 ms | hit rate |",
        "|---|---|---|---|---|",
        *(
            f"| {LABELS[p]} | {med[p]['rate']:.2f} | {med[p]['ttft_p50'] * 1000:.1f} | "
            f"{med[p]['ttft_p99'] * 1000:.1f} | {med[p]['hit']:.1%} |"
            for p in POLICIES
        ),
        "",
        f"Prefix-aware / default: TTFT p50 {ttft_ratio:.2f} × (round by round {', '.join(f'{x:.2f}' for x in ttft_ratios)}; "
        f"target ≤ {TARGET_TTFT}), req/s {rate_ratio:.2f} × (round by round {', '.join(f'{x:.2f}' for x in rate_ratios)}; "
        f"target ≥ {TARGET_RATE}): **{'met' if met else 'not met'}**.",
    ]
    return "\n".join(lines), {"ttft_ratio": ttft_ratio, "rate_ratio": rate_ratio, "met": met, "medians": med}


def write_doc(data: dict[str, Any]) -> None:
    """The "Routing" section of docs/benchmarks.md from one run's numbers (.bench/routing.json)."""
    from benchdoc import write_section

    turns = data["turns"]
    summary, _ = _summary(turns)
    body = (
        f"`python tests/bench/routing_bench.py` (in `make bench`): {data['sizes']}. Workload: {USERS} users, user u "
        f"always on system prompt u mod {SYSTEM_PROMPTS}; each request one user's short question (~20 tokens) "
        f"after its system prompt, {MAX_TOKENS} streamed tokens back (ignore_eos, greedy); a closed loop of "
        f"{data['concurrency']} clients, {data['requests']} requests per policy and round, users in a seeded random "
        f"order. Both policies take turns on one application (an edit of spec.routing.policy, which with Ray 2.60 "
        f"restarts the engine replicas, so every turn starts on fresh engines), the first policy alternating by "
        f"round; vLLM's prefix caches are emptied before each turn and every round has new system prompts. Hit "
        f"rate: vLLM's prefix_cache_hits / prefix_cache_queries (tokens), both replicas. Servers ready "
        f"{data['ready_s']:.0f} s after the start.\n\n{_table(turns)}\n\n{summary}\n"
    )
    write_section("Routing: prefix-cache aware vs Serve's default", body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="m8", choices=("m8", "tiny", "m100"), help="the generated model (serving_bench)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=192, help="requests per policy and round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/benchmarks.md")
    parser.add_argument("--render", action="store_true", help="only write docs/benchmarks.md from .bench/routing.json")
    args = parser.parse_args(argv)
    if args.render:
        write_doc(json.loads(RAW.read_text()))
        return 0

    from serving_bench import _model_dir, _parameters
    from transformers import AutoTokenizer

    from bigmodel_serving.local import run_local

    model_dir, config = _model_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    per_token = kv_bytes_per_token(config)
    prompts_by_round = [system_prompts(tokenizer, r) for r in range(args.rounds)]
    prompt_tokens = statistics.mean(len(tokenizer.encode(p)) for p in prompts_by_round[0])
    kv_tokens = int(PREFIXES_PER_REPLICA * (prompt_tokens + 40))
    kv_bytes = kv_tokens * per_token
    sizes = (
        f"model `{args.model}` ({_parameters(config) / 1e6:.1f} M parameters, {per_token} B of KV cache per token), {REPLICAS} engine replicas, each "
        f"with a KV cache of {kv_bytes / 2**20:.1f} MiB = {kv_tokens} tokens; {SYSTEM_PROMPTS} system prompts of "
        f"{prompt_tokens:.0f} tokens on average = {SYSTEM_PROMPTS * prompt_tokens:.0f} tokens of prefixes "
        f"(one replica holds {kv_tokens / prompt_tokens:.1f} of them, the two {2 * kv_tokens / prompt_tokens:.1f})"
    )
    print(f"routing bench: {sizes}", flush=True)
    started = time.monotonic()
    port, metrics_port = _free_port(), _free_port()
    server = run_local(
        application(model_dir, kv_bytes, POLICIES[0], metrics_port, args.model), port=port, block=False, num_cpus=4
    )
    ready_s = time.monotonic() - started
    turns: list[dict[str, Any]] = []
    try:
        for round_index in range(args.rounds):
            order = POLICIES if round_index % 2 == 0 else POLICIES[::-1]
            conversations = workload(prompts_by_round[round_index], args.requests, round_index)
            for policy in order:
                server.deploy([application(model_dir, kv_bytes, policy, metrics_port, args.model)])
                _reset_prefix_caches("routing-bench")
                metrics_url = str(server.metrics_urls["routing-bench"])
                result = asyncio.run(run_turn(server.url, metrics_url, conversations, args.concurrency, args.model))
                result.update(policy=policy, round=round_index + 1)
                turns.append(result)
                print(
                    f"round {round_index + 1} {policy}: {result['rate']:.2f} req/s, TTFT p50 "
                    f"{result['ttft_p50'] * 1000:.1f} ms p99 {result['ttft_p99'] * 1000:.1f} ms, hit rate "
                    f"{result['hit_rate']:.1%}, errors {result['errors']}, load {result['load']:.1f}",
                    flush=True,
                )
    finally:
        server.shutdown()
    summary, numbers = _summary(turns)
    print(summary)
    data = {
        "turns": turns,
        "summary": numbers,
        "sizes": sizes,
        "ready_s": ready_s,
        "concurrency": args.concurrency,
        "requests": args.requests,
    }
    RAW.parent.mkdir(exist_ok=True)
    RAW.write_text(json.dumps(data, indent=2, default=str))
    if not args.no_write:
        write_doc(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
