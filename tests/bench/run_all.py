"""`make bench`: every CPU benchmark, each writing its own section of docs/benchmarks.md.

The GPU fine-tuning benchmark runs on a lent GPU machine (tests/gpu); see docs/benchmarks.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEPS = [
    ("control plane", [sys.executable, "tests/cluster/devcluster.py", "up"]),
    ("operator: 1,000 BigModels", [sys.executable, "tests/bench/operator_bench.py"]),
    ("serving path", [sys.executable, "tests/bench/serving_bench.py", "--out", "docs/benchmarks.md"]),
    (
        "fast path: ours vs vllm serve, Ray's switches",
        [sys.executable, "tests/bench/fastpath_bench.py", "--models", "tiny,m100"],
    ),
    ("routing: prefix-aware vs Serve's default", [sys.executable, "tests/bench/routing_bench.py"]),
    ("canary split", [sys.executable, "tests/bench/canary_bench.py", "--out", "docs/benchmarks.md"]),
    ("feedback endpoint", [sys.executable, "tests/bench/feedback_bench.py", "--out", "docs/benchmarks.md"]),
    (
        "training on the CPU: preprocessing, gloo ranks",
        [sys.executable, "tests/bench/training_bench.py", "--out", "docs/benchmarks.md"],
    ),
]


def main() -> int:
    failed = []
    for title, argv in STEPS:
        print(f"\n== bench: {title}", flush=True)
        if subprocess.run(argv, cwd=REPO, check=False).returncode != 0:
            failed.append(title)
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("\nbench: results written to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
