"""Inference engines behind one interface (`Engine`); `create_engine` picks one from the args."""

from __future__ import annotations

from collections.abc import Callable

from bigmodel_serving.args import ServeArgs
from bigmodel_serving.engines.base import Engine, GenerationRequest, ModelInfo, SamplingParams, TokenDelta

EngineFactory = Callable[[ServeArgs], Engine]

__all__ = ["Engine", "EngineFactory", "GenerationRequest", "ModelInfo", "SamplingParams", "TokenDelta", "create_engine"]


def create_engine(args: ServeArgs) -> Engine:
    """The engine named by `args.engine` (not started yet; call `await engine.start()`)."""
    if args.engine == "vllm":
        from bigmodel_serving.engines.vllm_engine import VLLMEngine

        return VLLMEngine(args)
    from bigmodel_serving.engines.transformers_engine import TransformersEngine

    return TransformersEngine(args)
