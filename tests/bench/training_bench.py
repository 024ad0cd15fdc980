"""Training on the CPU: dataset preprocessing tokens/s and data-parallel scaling over gloo ranks (issue 20).

1. Preprocessing: the token cache (training/bigmodel_training/tokencache.py: validate, render the chat
   template, tokenize, write memory-mapped files) over a synthetic chat JSONL with 1 and 2 worker
   processes, against a floor measured in the same run: the plain loop a trainer without the cache runs
   (one process, `tokenizer.apply_chat_template` per row, nothing validated or written).
2. Scaling: the tiny random Llama, LoRA, the same global batch (4 sequences per optimizer step: one
   process with gradient accumulation 4, two with 2, four with 1), started by `python -m
   bigmodel_training launch` (torchrun) with 1, 2 and 4 ranks, one thread each (OMP_NUM_THREADS=1),
   against one process with one thread (and one with the machine's threads). Then 2 ranks as two launchers meeting through
   the c10d rendezvous (`--nnodes=2`, JOB_COMPLETION_INDEX 0 and 1: what the two pods of an Indexed
   Job run), on 127.0.0.1.

Writes the "Training on the CPU" section of docs/benchmarks.md (`--out docs/benchmarks.md`), with the
load average next to each row: the machine is shared.

    .venv/bin/python tests/bench/training_bench.py [--rows 20000] [--steps 20] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "bench"))

WORDS = [
    "the",
    "model",
    "answers",
    "questions",
    "about",
    "billing",
    "refunds",
    "invoices",
    "shipping",
    "orders",
    "accounts",
    "passwords",
    "cluster",
    "nodes",
    "pods",
    "memory",
    "storage",
    "network",
    "latency",
    "tokens",
    "adapters",
    "training",
    "serving",
    "replicas",
]


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def write_chats(path: Path, rows: int, seed: int = 0, short: bool = False) -> Path:
    """`rows` chat records: user turns of 8-40 words and answers of 10-120 (short: 3-10 and 5-24)."""
    rng = random.Random(seed)
    user_words, sentences = ((3, 10), (1, 2)) if short else ((8, 40), (2, 6))
    with path.open("w") as out:
        for i in range(rows):
            user = f"Question {i}: " + _sentence(rng, rng.randint(*user_words))
            answer = " ".join(_sentence(rng, rng.randint(5, 12)) for _ in range(rng.randint(*sentences)))
            record = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
            out.write(json.dumps(record) + "\n")
    return path


def _load() -> float:
    return os.getloadavg()[0]


def preprocessing(model_dir: Path, rows: int, work: Path) -> list[dict[str, Any]]:
    from bigmodel_training import tokencache
    from bigmodel_training.modeling import load_tokenizer

    dataset = write_chats(work / "chats.jsonl", rows)
    digest = hashlib.sha256(dataset.read_bytes()).hexdigest()
    size_mib = dataset.stat().st_size / 2**20
    results = []
    tokenizer = load_tokenizer(model_dir)
    started, tokens, load = time.perf_counter(), 0, _load()
    with dataset.open() as lines:
        for line in lines:
            ids = tokenizer.apply_chat_template(json.loads(line)["messages"], tokenize=True, return_dict=True)
            tokens += len(ids["input_ids"])
    seconds = time.perf_counter() - started
    results.append(
        {
            "what": "floor: apply_chat_template per row, 1 process, nothing written",
            "rows": rows,
            "tokens": tokens,
            "seconds": seconds,
            "load": max(load, _load()),
        }
    )
    for workers in (1, 2):
        load = _load()
        _, stats = tokencache.build(
            dataset,
            model_dir,
            fmt="chat",
            redact=False,
            dataset_sha256=digest,
            root=work / f"cache-{workers}",
            workers=workers,
        )
        results.append(
            {
                "what": f"token cache, {workers} worker{'s' if workers > 1 else ''}",
                "rows": stats.examples,
                "tokens": stats.tokens,
                "seconds": stats.seconds,
                "load": max(load, _load()),
            }
        )
    for row in results:
        row["mib"] = size_mib
    return results


def _config(model_dir: Path, dataset: Path, out: Path, steps: int, accumulation: int) -> dict[str, Any]:
    return {
        "base_model": {"uri": f"file://{model_dir}"},
        "dataset": {"uri": f"file://{dataset}", "format": "chat", "min_examples": 4},
        "method": {"type": "lora", "rank": 8, "dropout": 0.0},
        "hyperparameters": {
            "max_steps": steps, "learning_rate": 1e-3, "batch_size": 1, "gradient_accumulation_steps": accumulation,
            "max_seq_length": 256, "gradient_checkpointing": False, "seed": 7,
        },
        "output": {"uri": f"file://{out}"},
        "checkpoint": {"every_steps": 10_000, "keep": 1},
        "progress": {"sink": "none"},
    }  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _launch_args(ranks: int, launchers: int, port: int) -> list[str]:
    if launchers == 1:
        return ["--standalone", f"--nproc-per-node={ranks}"]
    return [
        f"--nnodes={launchers}", f"--nproc-per-node={ranks // launchers}", "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=bench", "--rdzv-conf=join_timeout=120",
    ]  # fmt: skip


def training_run(
    model_dir: Path, dataset: Path, work: Path, steps: int, ranks: int, launchers: int, threads: int
) -> dict[str, Any]:
    name = f"ranks{ranks}-launchers{launchers}-threads{threads}"
    out = work / name
    out.mkdir(parents=True)
    config = out.parent / f"{name}.json"
    config.write_text(json.dumps(_config(model_dir, dataset, out, steps, 4 // ranks)))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "BIGMODEL_TOKEN_CACHE": str(work / f"tokens-{name}")}
    env["BIGMODEL_TERMINATION_LOG"] = str(out.parent / f"{name}.termination")
    port, load, started = _free_port(), _load(), time.monotonic()
    procs = []
    for index in range(launchers):
        argv = [sys.executable, "-m", "bigmodel_training"]
        if ranks > 1:
            argv += ["launch", *_launch_args(ranks, launchers, port), "-m", "bigmodel_training"]
        launcher_env = {**env, **({"JOB_COMPLETION_INDEX": str(index)} if launchers > 1 else {})}
        procs.append(
            subprocess.Popen(
                [*argv, "--config", str(config)],
                env=launcher_env,
                cwd=work,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    wall = time.monotonic() - started
    for proc, output in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise SystemExit(f"{name} exited {proc.returncode}:\n{output[-4000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == ranks, metrics["processes"]
    return {
        "what": f"{ranks} rank{'s' if ranks > 1 else ''}"
        + (f", {launchers} launchers (c10d rendezvous)" if launchers > 1 else "")
        + f", {threads} thread{'s' if threads > 1 else ''}"
        + (" each" if ranks > 1 else ""),
        "steps": metrics["steps"],
        "train_s": metrics["train_time_s"],
        "tokens_per_second": metrics["tokens_per_second"],
        "final_loss": metrics["final_loss"],
        "wall_s": wall,
        "load": max(load, _load()),
    }


def scaling(model_dir: Path, steps: int, work: Path) -> list[dict[str, Any]]:
    dataset = write_chats(work / "train.jsonl", 512, seed=1, short=True)
    cases = [(1, 1, os.cpu_count() or 1), (1, 1, 1), (2, 1, 1), (4, 1, 1), (2, 2, 1)]
    return [training_run(model_dir, dataset, work, steps, *case) for case in cases]


def render(pre: list[dict[str, Any]], scale: list[dict[str, Any]], steps: int) -> str:
    floor = pre[0]["tokens"] / pre[0]["seconds"]
    lines = [
        "`.venv/bin/python tests/bench/training_bench.py --out docs/benchmarks.md` (in `make bench`). The tiny random",
        "Llama's tokenizer (`bigmodel dev tiny-model`, a 768-token BPE: more tokens per word than a real model's). Speed",
        "is never asserted in tests; the load average (1 min, the highest seen around the row) is next to each number.",
        "",
        f"**Preprocessing** a synthetic chat JSONL ({pre[0]['rows']:,} rows, {pre[0]['mib']:.1f} MiB): the token cache",
        "validates each line, renders the chat template with the completion mask, tokenizes and appends to",
        "memory-mapped files; the floor only tokenizes.",
        "",
        "| what | tokens | seconds | tokens/s | vs floor | load |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in pre:
        rate = row["tokens"] / row["seconds"]
        lines.append(
            f"| {row['what']} | {row['tokens']:,} | {row['seconds']:.2f} | {rate:,.0f} | {rate / floor:.2f}× "
            f"| {row['load']:.2f} |"
        )
    base = next(r for r in scale if r["what"] == "1 rank, 1 thread")["tokens_per_second"]
    lines += [
        "",
        f"**Data-parallel scaling over gloo** ({steps} optimizer steps of 4 sequences of up to 256 tokens, packed; LoRA",
        "rank 8 on the tiny model; every run the same global batch, so the loss curves are the same: the integration",
        "tier checks that to 1e-4). tokens/s counts real tokens of all ranks per second of optimizer-step time;",
        "wall is the whole command (imports, model load, tokenizing, save and eval included).",
        "",
        "| ranks | steps | training s | tokens/s | vs 1 rank, 1 thread | wall s | final loss | load |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in scale:
        lines.append(
            f"| {row['what']} | {row['steps']} | {row['train_s']:.2f} | {row['tokens_per_second']:,.0f} "
            f"| {row['tokens_per_second'] / base:.2f}× | {row['wall_s']:.1f} | {row['final_loss']:.4f} "
            f"| {row['load']:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", help="docs/benchmarks.md: write the section there")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "training"))
    from bigmodel_training.tinymodel import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="training-bench-") as tmp:
        work = Path(tmp)
        model_dir = make_tiny_model(work / "tiny-llama")  # its own copy: a shared cache may be wiped meanwhile
        pre = preprocessing(model_dir, args.rows, work)
        print(json.dumps(pre, indent=1), flush=True)
        scale = scaling(model_dir, args.steps, work)
        print(json.dumps(scale, indent=1), flush=True)
    body = render(pre, scale, args.steps)
    print(body)
    if args.out:
        from benchdoc import write_section

        write_section("Training on the CPU: preprocessing and gloo ranks", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
