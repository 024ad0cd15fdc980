"""The GPU/production engine: vLLM's async engine (continuous batching, LoRA requests).

Kept small on purpose: vLLM does the batching, scheduling and LoRA swapping; this file only maps
our requests onto `AsyncLLMEngine.generate` and its cumulative outputs onto text deltas. vllm is
imported in `start()` only, so this module imports fine on machines without it. vLLM's own
OpenAI server (and so its admin routes) is not used: our API layer stays the only entry point.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator
from typing import Any

from bigmodel_serving.args import ServeArgs
from bigmodel_serving.engines.base import GenerationRequest, ModelInfo, TokenDelta
from bigmodel_serving.engines.transformers_engine import EngineConfigError
from bigmodel_serving.engines.vllm_args import vllm_engine_kwargs


class VLLMEngine:
    """vLLM `AsyncLLMEngine` built from `vllm_engine_kwargs(args)`; adapters as `LoRARequest`s."""

    def __init__(self, args: ServeArgs) -> None:
        self.kwargs = vllm_engine_kwargs(args)
        self.adapter_paths: dict[str, str] = {}
        for adapter in args.adapters:
            path = adapter.resolved_local_path()
            if path is None:
                raise EngineConfigError(f"adapter {adapter.name!r}: vLLM needs it on a local path (local_path)")
            self.adapter_paths[adapter.name] = str(path)
        self.hf_token_env = args.hf_token_env
        self.engine: Any = None
        self.tokenizer: Any = None
        self.lora_requests: dict[str, Any] = {}

    async def start(self) -> ModelInfo:
        from vllm import AsyncEngineArgs, AsyncLLMEngine
        from vllm.lora.request import LoRARequest

        if self.hf_token_env and self.hf_token_env != "HF_TOKEN" and os.environ.get(self.hf_token_env):
            os.environ.setdefault("HF_TOKEN", os.environ[self.hf_token_env])
        self.engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**self.kwargs))
        tokenizer = self.engine.get_tokenizer()
        self.tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
        self.lora_requests = {
            name: LoRARequest(name, index + 1, path) for index, (name, path) in enumerate(self.adapter_paths.items())
        }
        model_config = self.engine.model_config
        if inspect.isawaitable(model_config):
            model_config = await model_config
        return ModelInfo(max_model_len=int(model_config.max_model_len), adapters=tuple(self.adapter_paths))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(rendered)

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        from vllm import SamplingParams

        sampling = request.sampling
        params = SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
        )
        lora_request = self.lora_requests[request.adapter] if request.adapter else None
        text_so_far = ""
        tokens_so_far = 0
        stream = self.engine.generate(
            {"prompt_token_ids": request.prompt_token_ids},
            params,
            request.request_id,
            lora_request=lora_request,
        )
        try:
            async for output in stream:
                completion = output.outputs[0]
                delta = TokenDelta(
                    text=completion.text[len(text_so_far) :],
                    num_tokens=len(completion.token_ids) - tokens_so_far,
                    finish_reason=completion.finish_reason if output.finished else None,
                )
                text_so_far, tokens_so_far = completion.text, len(completion.token_ids)
                if delta.text or delta.num_tokens or delta.finish_reason:
                    yield delta
        finally:
            await self.engine.abort(request.request_id)

    async def check_health(self) -> None:
        await self.engine.check_health()
