"""Load generation for `serving_bench.py`: bounded request loops over loopback HTTP, and latency statistics."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class RunStats:
    """What one bounded run measured; times in seconds."""

    requests: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    inter_token: list[float] = field(default_factory=list)
    status_counts: dict[int, int] = field(default_factory=dict)

    def merge(self, other: RunStats) -> None:
        """Add another run of the same kind (e.g. the next round) to this one."""
        self.requests += other.requests
        self.elapsed += other.elapsed
        self.latencies += other.latencies
        self.ttfts += other.ttfts
        self.inter_token += other.inter_token
        for status, count in other.status_counts.items():
            self.status_counts[status] = self.status_counts.get(status, 0) + count

    def record_status(self, status: int) -> None:
        self.status_counts[status] = self.status_counts.get(status, 0) + 1

    @property
    def errors(self) -> int:
        return sum(count for status, count in self.status_counts.items() if status != 200)

    def summary(self) -> dict[str, Any]:
        def ms(values: list[float], q: float) -> float:
            return round(percentile(values, q) * 1000, 2)

        return {
            "requests": self.requests,
            "rps": round(self.requests / self.elapsed, 3) if self.elapsed else 0.0,  # ratios are taken from it
            "latency_p50_ms": ms(self.latencies, 50),
            "latency_p99_ms": ms(self.latencies, 99),
            "ttft_p50_ms": ms(self.ttfts, 50),
            "ttft_p99_ms": ms(self.ttfts, 99),
            "itl_p50_ms": ms(self.inter_token, 50),
            "itl_p99_ms": ms(self.inter_token, 99),
            "errors": self.errors,
            "status_counts": {str(key): value for key, value in sorted(self.status_counts.items())},
        }


OneRequest = Callable[[aiohttp.ClientSession, RunStats], Awaitable[None]]


async def run_load(one: OneRequest, *, total: int, concurrency: int, warmup: int = 5) -> RunStats:
    """Send `total` requests with `concurrency` in flight (after `warmup` unrecorded ones)."""
    connector = aiohttp.TCPConnector(limit=concurrency + 4, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        scratch = RunStats()
        for _ in range(warmup):
            await one(session, scratch)
        stats = RunStats()
        remaining = total

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one(session, stats)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        stats.elapsed = time.perf_counter() - started
    return stats


async def run_interleaved(ones: dict[str, OneRequest], *, rounds: int, warmup: int = 20) -> dict[str, RunStats]:
    """One request to each target per round, in turn, so slow drift of the machine hits all alike."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        scratch = RunStats()
        for _ in range(warmup):
            for one in ones.values():
                await one(session, scratch)
        stats = {name: RunStats() for name in ones}
        for _ in range(rounds):
            for name, one in ones.items():
                started = time.perf_counter()
                await one(session, stats[name])
                stats[name].elapsed += time.perf_counter() - started
    return stats


def plain_request(method: str, url: str, body: dict[str, Any] | None = None) -> OneRequest:
    """A request whose whole answer is timed."""

    async def one(session: aiohttp.ClientSession, stats: RunStats) -> None:
        started = time.perf_counter()
        async with session.request(method, url, json=body) as response:
            await response.read()
            stats.record_status(response.status)
        stats.latencies.append(time.perf_counter() - started)
        stats.requests += 1

    return one


def streaming_request(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> OneRequest:
    """A streamed completion: time to first text, gaps between texts, total time."""

    async def one(session: aiohttp.ClientSession, stats: RunStats) -> None:
        started = time.perf_counter()
        last: float | None = None
        async with session.post(url, json={**body, "stream": True}, headers=headers) as response:
            stats.record_status(response.status)
            async for raw_line in response.content:
                line = raw_line.strip()
                if not line.startswith(b"data: {"):
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                text = choices[0].get("text") or (choices[0].get("delta") or {}).get("content")
                if not text:
                    continue
                now = time.perf_counter()
                if last is None:
                    stats.ttfts.append(now - started)
                else:
                    stats.inter_token.append(now - last)
                last = now
        stats.latencies.append(time.perf_counter() - started)
        stats.requests += 1

    return one


async def time_rejections(url: str, body: dict[str, Any], *, fill: int, probes: int) -> dict[str, Any]:
    """Occupy the server with `fill` slow requests, then time `probes` more; report the 429/503s."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def call() -> tuple[int, float, str | None]:
            started = time.perf_counter()
            async with session.post(url, json=body) as response:
                await response.read()
                return response.status, time.perf_counter() - started, response.headers.get("Retry-After")

        fillers = []
        for _ in range(fill):  # one by one, so each is routed before the next arrives
            fillers.append(asyncio.create_task(call()))
            await asyncio.sleep(0.1)
        results = []
        for _ in range(probes):
            results.append(await call())
        await asyncio.gather(*fillers)
    rejected = [elapsed for status, elapsed, _ in results if status in (429, 503)]
    return {
        "probes": probes,
        "rejected": len(rejected),
        "statuses": sorted({status for status, _, _ in results}),
        "retry_after": sorted({retry or "-" for _, _, retry in results}),
        "reject_p50_ms": round(percentile(rejected, 50) * 1000, 2),
        "reject_max_ms": round(max(rejected) * 1000, 2) if rejected else float("nan"),
    }


def mean_ms(values: list[float]) -> float:
    return round(statistics.fmean(values) * 1000, 2) if values else float("nan")


def asgi_post_scope(path: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """The ASGI scope of a JSON POST from 127.0.0.1, for driving an app in this process (no socket)."""
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    raw += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": raw,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
