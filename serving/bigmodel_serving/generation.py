"""Runs a validated request on the engine: admission, n choices, stop strings, timeout, usage, SSE.

The API layer (`api.py`) turns HTTP bodies into a `PreparedRequest`; this module produces the
OpenAI response bodies (or server-sent events) for it and records metrics and the request log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from bigmodel_serving.admission import AdmissionGate
from bigmodel_serving.engines.base import Engine, GenerationRequest, SamplingParams, TokenDelta
from bigmodel_serving.errors import internal_error, timed_out
from bigmodel_serving.metrics import ServingMetrics
from bigmodel_serving.request_log import RequestLogger

DONE_EVENT = b"data: [DONE]\n\n"
logger = logging.getLogger(__name__)


@dataclass
class PreparedRequest:
    """A request that passed validation: the prompt is tokenized and fits, max_tokens is known."""

    request_id: str
    kind: Literal["chat", "completion"]
    model: str  # the name the client sent, echoed in responses
    base_model: str
    adapter: str | None
    prompt: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    log_fields: dict[str, Any] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.perf_counter)


@dataclass
class ChoiceResult:
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str = "stop"


class StopMatcher:
    """Finds stop strings across deltas; holds back text that could be the start of one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to send now, whether a stop string was reached)."""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [index for index in (self.pending.find(stop) for stop in self.stops) if index >= 0]
        if hits:
            emitted, self.pending = self.pending[: min(hits)], ""
            return emitted, True
        hold = max((_overlap(self.pending, stop) for stop in self.stops), default=0)
        emitted = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(emitted) :]
        return emitted, False

    def flush(self) -> str:
        emitted, self.pending = self.pending, ""
        return emitted


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-size:]):
            return size
    return 0


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class Generator:
    """Generates answers for prepared requests on one engine, within the replica's limits."""

    def __init__(
        self,
        engine: Engine,
        gate: AdmissionGate,
        metrics: ServingMetrics,
        timeout_s: float,
        request_logger: RequestLogger | None = None,
    ) -> None:
        self.engine = engine
        self.gate = gate
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.request_logger = request_logger

    async def _choice(
        self, prepared: PreparedRequest, index: int, on_delta: Callable[[int, str], None]
    ) -> ChoiceResult:
        sampling = prepared.sampling
        if sampling.seed is not None and index:
            sampling = replace(sampling, seed=sampling.seed + index)
        request = GenerationRequest(
            request_id=f"{prepared.request_id}-{index}",
            prompt=prepared.prompt,
            prompt_token_ids=prepared.prompt_token_ids,
            sampling=sampling,
            adapter=prepared.adapter,
        )
        result = ChoiceResult()
        matcher = StopMatcher(sampling.stop)
        stream = self.engine.generate(request)
        try:
            async for delta in stream:
                if index == 0 and result.completion_tokens == 0 and delta.num_tokens:
                    self._observe_ttft(prepared)
                result.completion_tokens += delta.num_tokens
                text, stopped = matcher.feed(delta.text)
                if delta.finish_reason and not stopped:
                    text += matcher.flush()
                if text:
                    result.text += text
                    on_delta(index, text)
                if stopped or delta.finish_reason:
                    result.finish_reason = "stop" if stopped else delta.finish_reason or "stop"
                    break
        finally:
            await _close(stream)
        return result

    def _observe_ttft(self, prepared: PreparedRequest) -> None:
        self.metrics.ttft.labels(prepared.base_model, prepared.adapter or "").observe(
            time.perf_counter() - prepared.started
        )

    async def _run(self, prepared: PreparedRequest, on_delta: Callable[[int, str], None]) -> list[ChoiceResult]:
        results = await asyncio.gather(*(self._choice(prepared, index, on_delta) for index in range(prepared.n)))
        completion_tokens = sum(result.completion_tokens for result in results)
        self.metrics.observe_tokens(
            prepared.base_model, prepared.adapter or "", len(prepared.prompt_token_ids), completion_tokens
        )
        if self.request_logger is not None:
            await self.request_logger.log(
                {
                    "request_id": prepared.request_id,
                    "kind": prepared.kind,
                    "model": prepared.model,
                    **prepared.log_fields,
                    "completions": [result.text for result in results],
                    "finish_reasons": [result.finish_reason for result in results],
                    "usage": usage(prepared, results),
                }
            )
        return results

    async def complete(self, prepared: PreparedRequest) -> dict[str, Any]:
        """The whole (non-streaming) response body; 429 when over capacity, 504 on timeout."""
        try:
            async with asyncio.timeout(self.timeout_s), self.gate.slot():
                results = await self._run(prepared, lambda index, text: None)
        except TimeoutError:
            raise timed_out(self.timeout_s) from None
        return response_body(prepared, results)

    async def stream(self, prepared: PreparedRequest) -> tuple[AsyncIterator[bytes], Callable[[], None]]:
        """Admit the request (429 now if over capacity), then return (SSE chunks, cancel)."""
        try:
            await asyncio.wait_for(self.gate.acquire(), self.timeout_s)
        except TimeoutError:
            raise timed_out(self.timeout_s) from None
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        producer = asyncio.create_task(self._produce(prepared, queue))

        def finished(_: asyncio.Task[None]) -> None:
            # A done callback runs even when the task is cancelled before it started.
            self.gate.release()
            queue.put_nowait(None)

        producer.add_done_callback(finished)

        async def events() -> AsyncIterator[bytes]:
            try:
                while (chunk := await queue.get()) is not None:
                    yield chunk
            finally:
                producer.cancel()

        def cancel() -> None:
            producer.cancel()

        return events(), cancel

    async def _produce(self, prepared: PreparedRequest, queue: asyncio.Queue[bytes | None]) -> None:
        chunk = ChunkFactory(prepared)
        try:
            for index in range(prepared.n):
                queue.put_nowait(chunk.first(index))
            async with asyncio.timeout(self.timeout_s):
                results = await self._run(prepared, lambda index, text: queue.put_nowait(chunk.text(index, text)))
            for index, result in enumerate(results):
                queue.put_nowait(chunk.finish(index, result.finish_reason))
            if prepared.include_usage:
                queue.put_nowait(chunk.usage(results))
            queue.put_nowait(DONE_EVENT)
        except TimeoutError:
            queue.put_nowait(sse(timed_out(self.timeout_s).body()))
        except Exception:
            logger.exception("generation failed for request %s", prepared.request_id)
            queue.put_nowait(sse(internal_error().body()))


async def _close(stream: AsyncIterator[TokenDelta]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def usage(prepared: PreparedRequest, results: list[ChoiceResult]) -> dict[str, int]:
    prompt_tokens = len(prepared.prompt_token_ids)
    completion_tokens = sum(result.completion_tokens for result in results)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response_body(prepared: PreparedRequest, results: list[ChoiceResult]) -> dict[str, Any]:
    """The OpenAI `chat.completion` or `text_completion` object."""
    choices: list[dict[str, Any]]
    if prepared.kind == "chat":
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
            for index, result in enumerate(results)
        ]
        object_name = "chat.completion"
    else:
        prefix = prepared.prompt if prepared.echo else ""
        choices = [
            {"index": index, "text": prefix + result.text, "logprobs": None, "finish_reason": result.finish_reason}
            for index, result in enumerate(results)
        ]
        object_name = "text_completion"
    return {
        "id": prepared.request_id,
        "object": object_name,
        "created": prepared.created,
        "model": prepared.model,
        "choices": choices,
        "usage": usage(prepared, results),
    }


class ChunkFactory:
    """Server-sent event chunks in OpenAI's `chat.completion.chunk` / `text_completion` shapes."""

    def __init__(self, prepared: PreparedRequest) -> None:
        self.prepared = prepared
        self.chat = prepared.kind == "chat"
        self.head = {
            "id": prepared.request_id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": prepared.created,
            "model": prepared.model,
        }

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse({**self.head, "choices": choices, **extra})

    def first(self, index: int) -> bytes:
        if self.chat:
            return self._event([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        prefix = self.prepared.prompt if self.prepared.echo else ""
        return self._event([{"index": index, "text": prefix, "logprobs": None, "finish_reason": None}])

    def text(self, index: int, text: str) -> bytes:
        if self.chat:
            return self._event([{"index": index, "delta": {"content": text}, "finish_reason": None}])
        return self._event([{"index": index, "text": text, "logprobs": None, "finish_reason": None}])

    def finish(self, index: int, reason: str) -> bytes:
        if self.chat:
            return self._event([{"index": index, "delta": {}, "finish_reason": reason}])
        return self._event([{"index": index, "text": "", "logprobs": None, "finish_reason": reason}])

    def usage(self, results: list[ChoiceResult]) -> bytes:
        return self._event([], usage=usage(self.prepared, results))
