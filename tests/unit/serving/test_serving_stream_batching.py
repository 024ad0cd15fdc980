"""The engine's stream batching: first chunk at once, later ones coalesced per interval, last one at the end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bigmodel_serving.stream_batching import first_then_batched


async def _tokens(gaps_s: list[float], fail: bool = False) -> AsyncIterator[int]:
    for index, gap in enumerate(gaps_s):
        await asyncio.sleep(gap)
        yield index
    if fail:
        raise RuntimeError("engine died")


async def _collect(source: AsyncIterator[int], interval_s: float) -> list[tuple[float, list[int]]]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    return [(loop.time() - started, batch) async for batch in first_then_batched(source, interval_s)]


def test_first_chunk_is_not_held_for_the_interval() -> None:
    batches = asyncio.run(_collect(_tokens([0.01] + [0.005] * 20), interval_s=0.05))
    first_at, first = batches[0]
    assert first == [0] and first_at < 0.04  # Ray's fixed timer would hold it until 50 ms
    assert [item for _, batch in batches for item in batch] == list(range(21))
    assert len(batches) <= 6  # ~110 ms of tokens in 50 ms batches, not 21 messages


def test_last_batch_goes_out_when_the_stream_ends() -> None:
    batches = asyncio.run(_collect(_tokens([0.0, 0.005, 0.005]), interval_s=0.5))
    assert batches[-1][0] < 0.2
    assert [item for _, batch in batches for item in batch] == [0, 1, 2]


def test_after_a_pause_the_next_chunk_goes_out_at_once() -> None:
    batches = asyncio.run(_collect(_tokens([0.0, 0.2, 0.001]), interval_s=0.05))
    assert [batch for _, batch in batches][:2] == [[0], [1]]
    assert batches[1][0] < 0.24


def test_zero_interval_sends_every_chunk_alone() -> None:
    batches = asyncio.run(_collect(_tokens([0.0] * 3), interval_s=0))
    assert [batch for _, batch in batches] == [[0], [1], [2]]


def test_errors_come_after_the_chunks_before_them() -> None:
    seen: list[int] = []

    async def run() -> None:
        async for batch in first_then_batched(_tokens([0.0, 0.001], fail=True), 0.05):
            seen.extend(batch)

    with pytest.raises(RuntimeError, match="engine died"):
        asyncio.run(run())
    assert seen == [0, 1]


def test_closing_the_stream_stops_reading_the_source() -> None:
    read: list[int] = []

    async def endless() -> AsyncIterator[int]:
        index = 0
        while True:
            await asyncio.sleep(0.001)
            read.append(index)
            yield index
            index += 1

    async def run() -> int:
        stream = first_then_batched(endless(), 0.01)
        await anext(stream)
        await stream.aclose()
        seen = len(read)
        await asyncio.sleep(0.05)
        return len(read) - seen

    assert asyncio.run(run()) <= 1
