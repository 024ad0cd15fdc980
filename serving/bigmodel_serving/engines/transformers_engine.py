"""The CPU/dev engine: Hugging Face transformers (+ peft adapters) from a local directory.

Generation runs in one worker thread (requests take turns; the simplest correct choice for a dev
engine, since the active peft adapter is model-wide state). Tokens reach the event loop through an
asyncio queue, so the loop is never blocked, and closing the stream cancels generation between two
tokens.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bigmodel_serving.args import ServeArgs
from bigmodel_serving.engines.base import GenerationRequest, ModelInfo, TokenDelta

_DONE = object()


class EngineConfigError(ValueError):
    """The serve args ask for something this engine cannot do."""


class IncrementalDetokenizer:
    """Turns token ids into text deltas as they arrive (vLLM's prefix/read offset method).

    Decoding the last few tokens twice, with and without the newest ones, keeps sentencepiece
    spaces and multi-byte characters right; a delta ending in a partial character waits.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        decode = self.tokenizer.decode
        prefix_text = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        full_text = decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return full_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever text is still held back (e.g. an incomplete character at the very end)."""
        decode = self.tokenizer.decode
        prefix_text = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        full_text = decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        self.prefix_offset = self.read_offset = len(self.ids)
        return full_text[len(prefix_text) :]


class TransformersEngine:
    """Loads `AutoModelForCausalLM` + `AutoTokenizer` from the model's local path; adapters via peft."""

    def __init__(self, args: ServeArgs) -> None:
        model_path = args.model.resolved_local_path()
        if model_path is None:
            raise EngineConfigError(
                f"the transformers engine loads local models only; model.uri {args.model.uri!r} has no "
                "local path (use file:///path, or let the operator mount it and set model.local_path)"
            )
        self.model_path = model_path
        self.tokenizer_path = Path(args.model.tokenizer) if args.model.tokenizer else model_path
        self.adapter_paths: dict[str, Path] = {}
        for adapter in args.adapters:
            path = adapter.resolved_local_path()
            if path is None:
                raise EngineConfigError(f"adapter {adapter.name!r}: the transformers engine needs a local path")
            self.adapter_paths[adapter.name] = path
        self.dtype = args.engine_args.dtype
        self.configured_max_len = args.engine_args.max_model_len
        self.model: Any = None
        self.tokenizer: Any = None
        # One thread: generation calls take turns, and switching adapters is safe.
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-generate")

    async def start(self) -> ModelInfo:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._load)

    def _load(self) -> ModelInfo:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        dtype: Any = "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
        model: Any = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype)
        if self.adapter_paths:
            from peft import PeftModel

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # peft probes deprecated transformers attrs
                names = iter(self.adapter_paths.items())
                first_name, first_path = next(names)
                model = PeftModel.from_pretrained(model, str(first_path), adapter_name=first_name)
                for name, path in names:
                    model.load_adapter(str(path), adapter_name=name)
        model.eval()
        self.model = model
        max_len = self.configured_max_len or int(getattr(model.config, "max_position_embeddings", 2048))
        return ModelInfo(max_model_len=max_len, adapters=tuple(self.adapter_paths))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            lines = [f"{message['role']}: {message['content']}" for message in messages]
            return "\n".join([*lines, "assistant:"])
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(rendered)

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        work = loop.run_in_executor(self.executor, self._generate_blocking, request, emit, cancelled)
        work.add_done_callback(_retrieve_exception)  # no "exception never retrieved" after early close
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                assert isinstance(item, TokenDelta)
                yield item
            await work  # re-raises a failure of the worker thread
        finally:
            cancelled.set()

    def _generate_blocking(self, request: GenerationRequest, emit: Any, cancelled: threading.Event) -> None:
        try:
            if not cancelled.is_set():
                self._run_generate(request, emit, cancelled)
        finally:
            emit(_DONE)

    def _run_generate(self, request: GenerationRequest, emit: Any, cancelled: threading.Event) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        detokenizer = IncrementalDetokenizer(self.tokenizer)
        counts = {"pending": 0, "generated": 0}

        class DeltaStreamer(BaseStreamer):
            prompt_seen = False

            def put(self, value: Any) -> None:
                if not self.prompt_seen:  # generate() first echoes the prompt
                    self.prompt_seen = True
                    return
                ids = [int(token) for token in value.reshape(-1).tolist()]
                counts["pending"] += len(ids)
                counts["generated"] += len(ids)
                text = detokenizer.add(ids)
                if text:
                    emit(TokenDelta(text=text, num_tokens=counts["pending"]))
                    counts["pending"] = 0

            def end(self) -> None:
                return None

        class StopWhenCancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool)

        sampling = request.sampling
        generate_kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_tokens, "do_sample": False}
        if sampling.temperature > 0:
            generate_kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        input_ids = torch.tensor([request.prompt_token_ids], dtype=torch.long)
        with torch.inference_mode(), self._adapter_context(request.adapter):
            self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                streamer=DeltaStreamer(),
                stopping_criteria=StoppingCriteriaList([StopWhenCancelled()]),
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                **generate_kwargs,
            )
        finish_reason = "length" if counts["generated"] >= sampling.max_tokens else "stop"
        emit(TokenDelta(text=detokenizer.flush(), num_tokens=counts["pending"], finish_reason=finish_reason))

    def _adapter_context(self, adapter: str | None) -> contextlib.AbstractContextManager[Any]:
        if not self.adapter_paths:
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    async def check_health(self) -> None:
        if self.model is None:
            raise RuntimeError("model not loaded")


def _retrieve_exception(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
