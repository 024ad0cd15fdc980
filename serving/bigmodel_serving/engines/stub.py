"""A fake engine with fixed latency and deterministic tokens, for tests and benchmarks only.

It is not one of `ServeArgs.engine`'s values on purpose: a manifest cannot select it. Tests and
`bench.py` pass `StubEngineFactory(...)` to `build_app(..., engine_factory=...)` instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bigmodel_serving.args import ServeArgs
from bigmodel_serving.engines.base import GenerationRequest, ModelInfo, TokenDelta

_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


class StubEngine:
    """Waits `ttft_s`, then yields one word per `per_token_s`, until max_tokens ("length")."""

    def __init__(self, *, max_model_len: int, adapters: tuple[str, ...], ttft_s: float, per_token_s: float) -> None:
        self.info = ModelInfo(max_model_len=max_model_len, adapters=adapters)
        self.ttft_s = ttft_s
        self.per_token_s = per_token_s

    async def start(self) -> ModelInfo:
        return self.info

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        lines = [f"{message['role']}: {message['content']}" for message in messages]
        return "\n".join([*lines, "assistant:"])

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        """One token per whitespace-separated word, ids from the word length."""
        return [len(word) for word in text.split()]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        offset = (request.sampling.seed or 0) + (1 if request.adapter else 0)
        await _sleep(self.ttft_s)
        for index in range(request.sampling.max_tokens):
            if index:
                await _sleep(self.per_token_s)
            last = index == request.sampling.max_tokens - 1
            word = _WORDS[(index + offset) % len(_WORDS)]
            yield TokenDelta(text=f" {word}" if index else word, num_tokens=1, finish_reason="length" if last else None)

    async def check_health(self) -> None:
        return None


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class StubEngineFactory:
    """Builds a `StubEngine` from the serve args (picklable, so Ray can ship it to replicas)."""

    ttft_s: float = 0.0
    per_token_s: float = 0.0
    default_max_model_len: int = 2048

    def __call__(self, args: ServeArgs) -> StubEngine:
        return StubEngine(
            max_model_len=args.engine_args.max_model_len or self.default_max_model_len,
            adapters=tuple(adapter.name for adapter in args.adapters),
            ttft_s=self.ttft_s,
            per_token_s=self.per_token_s,
        )
