"""reconcile/runner.py: real backoff that events do not cut short, waits that events do, a bound on
concurrent reconciles, and nothing left behind by a forgotten key (issue 21, "Retries that don't back off")."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from bigmodel_operator.reconcile import runner as runner_module
from bigmodel_operator.reconcile.runner import KeyedRunner, RetryLaterError, backoff_delay

pytestmark = pytest.mark.anyio  # the tests are coroutines, on a fresh asyncio loop each


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff in tenths of the real delays, without jitter (the shape is what is tested)."""
    monkeypatch.setattr(runner_module, "backoff_delay", lambda attempt, cap: min(cap, 2.0 ** (attempt - 1)) / 10)


def test_backoff_doubles_up_to_its_cap_with_bounded_jitter() -> None:
    delays = [backoff_delay(n, 60.0) for n in range(1, 9)]
    for n, delay in enumerate(delays, start=1):
        base = min(60.0, 2.0 ** (n - 1))
        assert base <= delay <= base * 1.2


async def test_events_do_not_cut_a_failure_backoff_short() -> None:
    runner = KeyedRunner("t")
    runs: list[float] = []
    loop = asyncio.get_running_loop()

    async def failing() -> None:
        runs.append(loop.time())
        raise RuntimeError("apiserver refused")

    start = loop.time()
    runner.trigger("k", failing, generation=1)
    while loop.time() - start < 0.55:  # a storm of watch events for the same generation
        runner.trigger("k", failing, generation=1)
        await asyncio.sleep(0.005)
    # Runs at 0, then after 0.1 and 0.2 s of backoff (the next one is due at 0.7 s), whatever the events:
    # never more (a slow machine may run them late, never early).
    assert 2 <= len(runs) <= 3, [round(t - start, 2) for t in runs]
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert all(gap >= expected * 0.9 for gap, expected in zip(gaps, [0.1, 0.2], strict=False)), gaps
    assert runner.backing_off() == 1
    runner.forget("k")


async def test_a_new_generation_runs_at_once() -> None:
    runner = KeyedRunner("t")
    runs: list[int] = []

    def work(generation: int, fail: bool) -> runner_module.Work:
        async def run() -> None:
            runs.append(generation)
            if fail:
                raise RuntimeError("bad spec")

        return run

    for _ in range(4):  # build up a long backoff for generation 1
        runner.trigger("k", work(1, True), generation=1)
        await runner.drain()
        await asyncio.sleep(0)
    before = len(runs)
    runner.trigger("k", work(2, False), generation=2)  # the user fixed the spec
    await runner.drain()
    assert runs[before:] == [2]
    assert runner.backing_off() == 0
    runner.forget("k")


async def test_a_wait_runs_again_on_its_own_and_sooner_on_an_event() -> None:
    runner = KeyedRunner("t")
    runs = 0
    gone = False

    async def waiting() -> None:
        nonlocal runs
        runs += 1
        if not gone:
            raise RetryLaterError("old children")

    runner.trigger("k", waiting, generation=1)
    await runner.drain()
    for _ in range(5):  # events that run it early (still waiting) do not stretch its backoff
        runner.trigger("k", waiting, generation=1)
        await runner.drain()
    assert runs == 6 and runner._waits["k"] == 1
    runs = 1
    await asyncio.sleep(0.15)  # the first wait is 0.1 s: it ran again by itself
    await runner.drain()
    assert runs == 2 and runner.waiting() == 1
    gone = True
    runner.trigger("k", waiting, generation=1)  # the old child's deletion event: at once, no backoff
    await runner.drain()
    assert runs == 3 and runner.waiting() == 0
    runner.forget("k")
    assert runner.tracked() == 0


async def test_concurrent_reconciles_are_bounded_and_each_key_runs_alone() -> None:
    runner = KeyedRunner("t", concurrency=4)
    running: set[str] = set()
    peak = 0
    runs: dict[str, int] = {}

    def work(key: str) -> runner_module.Work:
        async def run() -> None:
            nonlocal peak
            assert key not in running, "two runs of one key at once"
            running.add(key)
            peak = max(peak, len(running))
            runs[key] = runs.get(key, 0) + 1
            await asyncio.sleep(0.01)
            running.discard(key)

        return run

    for _ in range(3):  # a burst: each key triggered three times
        for i in range(40):
            runner.trigger(f"k{i}", work(f"k{i}"))
    await runner.drain()
    assert peak == 4
    assert all(1 <= n <= 2 for n in runs.values()), runs  # the burst coalesced
    for i in range(40):
        runner.forget(f"k{i}")
    assert runner.tracked() == 0


async def test_forgetting_a_key_while_it_fails_leaves_no_retry() -> None:
    runner = KeyedRunner("t")
    started = asyncio.Event()

    async def failing() -> None:
        started.set()
        await asyncio.sleep(0.02)
        raise RuntimeError("boom")

    runner.trigger("k", failing, generation=1)
    await started.wait()
    runner.forget("k")  # the object was deleted meanwhile
    await runner.drain()
    assert runner.tracked() == 0
