"""The one small interface every inference engine implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

FinishReason = str  # "stop" (end of sequence or a stop string) or "length" (max_tokens reached)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 means greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to continue; `adapter` is a LoRA adapter name or None for the base model."""

    request_id: str
    prompt: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    adapter: str | None = None


@dataclass(frozen=True)
class TokenDelta:
    """New text since the previous delta, how many tokens it holds, and why generation ended (last one)."""

    text: str
    num_tokens: int
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What the API layer needs to know about the loaded model."""

    max_model_len: int
    adapters: tuple[str, ...] = field(default_factory=tuple)


@runtime_checkable
class Engine(Protocol):
    """An inference engine: loads once (`start`), then generates for many concurrent requests.

    `generate` yields deltas as tokens are produced; closing the iterator early (client gone, stop
    string, timeout) must cancel the work. Nothing here may block the event loop.
    """

    async def start(self) -> ModelInfo: ...

    def render_chat(self, messages: list[dict[str, str]]) -> str: ...

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]: ...

    async def check_health(self) -> None: ...
