"""Typed serve args -> keyword arguments of vLLM's `AsyncEngineArgs` (pure; vllm not needed)."""

from __future__ import annotations

import json
from typing import Any

from bigmodel_serving.args import ServeArgs

# Settings that have a typed field (or that the app itself owns) may not come through extra_args.
_OWNED_KEYS = {
    "model": "model.uri",
    "served_model_name": "model.served_name",
    "tokenizer": "model.tokenizer",
    "revision": "model.revision",
    "dtype": "engine_args.dtype",
    "quantization": "engine_args.quantization",
    "max_model_len": "engine_args.max_model_len",
    "gpu_memory_utilization": "engine_args.gpu_memory_utilization",
    "tensor_parallel_size": "engine_args.tensor_parallel_size",
    "pipeline_parallel_size": "engine_args.pipeline_parallel_size",
    "enable_prefix_caching": "engine_args.enable_prefix_caching",
    "enable_lora": "adapters",
}


class InvalidEngineArgsError(ValueError):
    """engine_args.extra_args holds something that cannot be passed to vLLM."""


def parse_extra_args(extra_args: list[str]) -> dict[str, Any]:
    """Parse `--name=value`, `--name value`, `--flag` and `--no-flag` into vLLM keyword arguments.

    Values are read as JSON when they parse (`64`, `0.5`, `true`, `[1, 2]`), else kept as strings.
    """
    parsed: dict[str, Any] = {}
    items = list(extra_args)
    index = 0
    while index < len(items):
        item = items[index]
        index += 1
        if not item.startswith("--") or len(item) < 3:
            raise InvalidEngineArgsError(f"engine_args.extra_args: expected --name[=value], got {item!r}")
        name, has_value, raw = item[2:].partition("=")
        if not has_value and index < len(items) and not items[index].startswith("--"):
            raw, has_value = items[index], "="
            index += 1
        value: Any = _parse_value(raw) if has_value else True
        if not has_value and name.startswith("no-"):
            name, value = name[3:], False
        key = name.replace("-", "_")
        if key in _OWNED_KEYS:
            raise InvalidEngineArgsError(
                f"engine_args.extra_args: --{name} is set through {_OWNED_KEYS[key]}, not extra_args"
            )
        parsed[key] = value
    return parsed


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def vllm_engine_kwargs(args: ServeArgs) -> dict[str, Any]:
    """The `AsyncEngineArgs(**kwargs)` for these serve args; None-valued settings are left out."""
    engine = args.engine_args
    local_path = args.model.resolved_local_path()
    model = str(local_path) if local_path else (args.model.hub_id() or args.model.uri)
    kwargs: dict[str, Any] = {
        "model": model,
        "served_model_name": [args.model.served_name],
        "tokenizer": args.model.tokenizer,
        "revision": None if local_path else args.model.revision,
        "dtype": engine.dtype,
        "quantization": engine.quantization,
        "max_model_len": engine.max_model_len,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "pipeline_parallel_size": engine.pipeline_parallel_size,
        "enable_prefix_caching": engine.enable_prefix_caching,
        # The engine batches at most what the app admits at once.
        "max_num_seqs": args.limits.max_ongoing_requests,
    }
    if args.adapters:
        kwargs["enable_lora"] = True
        kwargs["max_loras"] = len(args.adapters)
    if engine.tensor_parallel_size * engine.pipeline_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "ray"
    kwargs.update(parse_extra_args(engine.extra_args))
    return {key: value for key, value in kwargs.items() if value is not None}
