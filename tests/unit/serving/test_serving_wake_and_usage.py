"""Serving's side of scale to zero, cold starts and cost, without Ray: the hold bound, the replica's
startup timeline (vLLM's log lines), busy time, and the weight cache's eviction plan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bigmodel_serving.errors import APIError
from bigmodel_serving.startup_report import LogFollower, StartupTimeline, apply_log_line, first_engine_on_pod
from bigmodel_serving.storage import CacheEntry, eviction_plan
from bigmodel_serving.usage_report import BusyClock, BusyUnion, UsageLedger
from bigmodel_serving.wake import within_wake_bound


async def _slow(first_after_s: float) -> AsyncIterator[str]:
    """An engine stream: the ingress bounds its first read, or the router call that opens it, the same way."""
    await asyncio.sleep(first_after_s)
    yield "first"
    yield "second"


def _replicas(count: int):  # type: ignore[no-untyped-def]
    async def running() -> int:
        return count

    return running


def test_a_request_is_held_until_the_first_item() -> None:
    async def run() -> str:
        return await within_wake_bound(_slow(0.05).__anext__(), 5.0, _replicas(0))

    assert asyncio.run(run()) == "first"


def test_past_the_bound_with_no_replica_the_answer_is_503() -> None:
    async def run() -> None:
        await within_wake_bound(_slow(10).__anext__(), 0.05, _replicas(0))

    with pytest.raises(APIError) as caught:
        asyncio.run(run())
    assert caught.value.status == 503 and caught.value.body()["error"]["code"] == "model_not_ready"
    assert caught.value.headers["Retry-After"] == "30"


def test_past_the_bound_a_running_replica_keeps_the_request() -> None:
    async def run() -> str:
        return await within_wake_bound(_slow(0.2).__anext__(), 0.05, _replicas(1))

    assert asyncio.run(run()) == "first"


def test_the_startup_timeline_follows_vllms_log_lines() -> None:
    clock = iter(range(100, 200))
    timeline = StartupTimeline(pod="w-1", constructed=99, wall=lambda: float(next(clock)), first_on_pod=True)
    timeline.begin("Downloading", "download")
    timeline.progress(50, 100)
    timeline.downloaded(100, cached=False)
    timeline.begin("Loading", "engine")
    apply_log_line(timeline, "INFO 12-06 [gpu_model_runner.py:5472] Model loading took 1.2 GiB memory and 3.1 seconds")
    apply_log_line(timeline, "INFO [core.py:369] init engine (profile, create kv cache, warmup model) took 9.20 s")
    timeline.finish()
    report = timeline.report()
    assert [p["name"] for p in report["phases"]] == ["Downloading", "Loading", "Compiling"]
    assert [p["source"] for p in report["phases"]] == ["download", "vllm", "vllm"]
    assert report["phases"][0]["bytesDone"] == 100 and report["phases"][0]["cached"] is False
    assert "readyAt" in report and report["pod"] == "w-1" and report["firstOnPod"] is True
    assert all("finishedAt" in p for p in report["phases"])


def test_without_vllms_lines_loading_covers_the_engine_start() -> None:
    timeline = StartupTimeline(pod=None, constructed=1.0)
    timeline.begin("Loading", "engine")
    timeline.finish()
    phases = timeline.report()["phases"]
    assert [(p["name"], p["source"]) for p in phases] == [("Loading", "engine")]


def test_a_failed_start_is_reported() -> None:
    timeline = StartupTimeline(pod=None, constructed=1.0)
    timeline.begin("Loading", "engine")
    timeline.finish(failed="RuntimeError: no memory")
    assert timeline.report()["failed"] == "RuntimeError: no memory" and "readyAt" not in timeline.report()


def test_the_log_follower_reads_only_new_lines(tmp_path: Path) -> None:
    out = tmp_path / "worker.out"
    out.write_text("Model loading took 1 GiB memory and 2 seconds\n")  # before the replica started: ignored
    timeline = StartupTimeline(pod=None, constructed=1.0)
    timeline.begin("Loading", "engine")
    follower = LogFollower(timeline, [out])
    with out.open("a") as handle:
        handle.write("(EngineCore pid=7) INFO Model loading took 1 GiB memory and 2 seconds\n")
    follower.poll()
    assert [p.name for p in timeline.phases] == ["Loading", "Compiling"]


def test_first_engine_on_pod(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    assert first_engine_on_pod(marker) is True
    assert first_engine_on_pod(marker) is False


def test_busy_clock_and_union() -> None:
    now = iter([10.0, 20.0, 25.0])
    clock = BusyClock(wall=lambda: next(now))
    clock.enter()  # 10
    clock.enter()
    clock.exit()
    clock.exit()  # 20
    clock.enter()  # 25
    clock.wall = lambda: 30.0
    assert clock.take() == [(10.0, 20.0), (25.0, 30.0)]
    union = BusyUnion()
    union.add([(10.0, 20.0), (15.0, 22.0)])  # two ingress replicas, overlapping
    union.add([(25.0, 30.0)])
    assert union.seconds == 17.0


def test_usage_report_by_key_and_model() -> None:
    ledger = UsageLedger(wall=lambda: 1_700_000_060.0, since=1_700_000_000.0)
    ledger.add_models({"tiny:support": {"responses": {200: 2}, "prompt_tokens": 30, "completion_tokens": 8}})
    ledger.busy.add([(1.0, 3.5)])
    report = ledger.report({"alice": {"responses": {200: 2, 429: 1}, "prompt_tokens": 30, "completion_tokens": 8}})
    assert (report["requests"], report["promptTokens"], report["completionTokens"]) == (3, 30, 8)
    assert report["busySeconds"] == 2.5
    assert report["byModel"]["tiny:support"] == {"requests": 2, "promptTokens": 30, "completionTokens": 8}
    assert report["since"] == "2023-11-14T22:13:20.000Z"


def test_eviction_plan_is_lru_and_spares_recent_use() -> None:
    entries = [CacheEntry("old", 40, 0.0), CacheEntry("mid", 40, 100.0), CacheEntry("new", 40, 9_000.0)]
    assert eviction_plan(entries, used=120, needed=30, max_bytes=120, now=10_000.0) == ["old"]
    assert eviction_plan(entries, used=120, needed=70, max_bytes=120, now=10_000.0) == ["old", "mid"]
    # "new" was used within the grace period: kept even though the bound is not met
    assert eviction_plan(entries, used=120, needed=200, max_bytes=120, now=10_000.0) == ["old", "mid"]
    assert eviction_plan(entries, used=10, needed=10, max_bytes=120, now=10_000.0) == []
