"""Check spec.engine.extraArgs against the pinned vLLM before any pod starts.

A typo or a flag vLLM no longer has (`--swap-space`) must become an `InvalidEngineArgs` condition, not a
crash-looping replica. Names and types come from `vllm_engine_args.py`, generated from the installed
vLLM's `AsyncEngineArgs` (a unit test regenerates it and fails on drift). The arguments are read the way
the serving app reads them: `--name=value`, `--name value`, `--flag`, `--no-flag`, values as JSON when
they parse (`64`, `0.5`, `true`, `{"k": 1}`), else as strings; each becomes `AsyncEngineArgs(name=value)`.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from bigmodel_operator.builders.vllm_engine_args import ALIASES, ENGINE_ARGS, VLLM_VERSION

# Engine arguments that a typed field (or the operator itself) sets; passing them twice is ambiguous.
OWNED_ARGS = {
    "model": "spec.model.uri",
    "served_model_name": "spec.model.servedName",
    "revision": "spec.model.revision",
    "tokenizer": "spec.model.tokenizer",
    "max_model_len": "spec.engine.maxModelLen",
    "dtype": "spec.engine.dtype",
    "quantization": "spec.engine.quantization",
    "kv_cache_dtype": "spec.engine.kvCacheDtype",
    "gpu_memory_utilization": "spec.engine.gpuMemoryUtilization",
    "tensor_parallel_size": "spec.engine.tensorParallelSize",
    "pipeline_parallel_size": "spec.engine.pipelineParallelSize",
    "enable_prefix_caching": "spec.engine.enablePrefixCaching",
    "max_num_seqs": "spec.engine.maxNumSeqs",
    "enable_lora": "spec.adapters",
    "max_loras": "spec.adapters",
    "max_lora_rank": "spec.engine.maxLoraRank",
    "hf_token": "spec.credentials.hfTokenSecretRef",
    "max_cpu_loras": "spec.adapters",
    "distributed_executor_backend": "the operator (Ray runs the engine's workers)",
    "disable_log_stats": "the serving app (the engine metrics on /metrics need the stats)",
    "tool_call_parser": "spec.engine.toolCallParser (default: from the model's family; none turns tools off)",
    "enable_auto_tool_choice": "spec.engine.toolCallParser (on with every parser)",
}
# Flags users still copy from older guides: say what happened instead of only "unknown".
_GONE = {
    "swap_space": "vLLM no longer has a CPU swap space for preempted sequences",
    "host": "Ray Serve binds the address, not the engine",
    "port": "Ray Serve binds the port, not the engine",
    "api_key": "API keys are spec.auth",
    "lora_modules": "adapters are spec.adapters",
}
_JSON_KIND = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "object", type(None): "null"}


def parse_extra_args(extra_args: list[str] | None) -> tuple[dict[str, Any], list[str]]:
    """(engine keyword arguments, problems), each problem naming the argument by its index."""
    parsed: dict[str, Any] = {}
    problems: list[str] = []
    items = list(extra_args or [])
    index = 0
    while index < len(items):
        at, item = index, items[index]
        index += 1
        name, has_value, raw = item.partition("=")
        if not has_value and index < len(items) and not items[index].startswith("--"):
            raw, has_value = items[index], "="
            index += 1
        problem = _check_one(at, name, raw if has_value else None, parsed)
        if problem:
            problems.append(problem)
    return parsed, problems


def check_extra_args(extra_args: list[str] | None) -> list[str]:
    """Problems with extraArgs (empty when vLLM accepts them all)."""
    return parse_extra_args(extra_args)[1]


def _check_one(at: int, flag: str, raw: str | None, parsed: dict[str, Any]) -> str | None:
    where = f"extraArgs[{at}]"
    if flag in ALIASES:
        long = "--" + ALIASES[flag].replace("_", "-")
        return f"{where} {flag} is vLLM's short form of {long}; write {long}" + _owned_note(ALIASES[flag])
    if not flag.startswith("--") or len(flag) < 3:
        return f"{where} {flag!r} is not a flag (expected --name, --name=value or --name value)"
    dest = flag[2:].replace("-", "_")
    value: Any = _parse_value(raw) if raw is not None else True
    if raw is None and dest.startswith("no_") and dest not in ENGINE_ARGS and dest[3:] in ENGINE_ARGS:
        dest, value = dest[3:], False
    if dest not in ENGINE_ARGS:
        return f"{where} {flag} is not an engine argument of vLLM {VLLM_VERSION}{_hint(dest)}"
    if dest in OWNED_ARGS:
        return f"{where} {flag} is set by {OWNED_ARGS[dest]}; use that instead"
    if dest in parsed:
        return f"{where} {flag} is given more than once"
    kinds, choices = ENGINE_ARGS[dest]
    if raw is None and "bool" not in kinds:
        return f"{where} {flag} needs a value ({' or '.join(kinds)})"
    kind = _JSON_KIND.get(type(value), "?")
    if kinds and kind not in kinds and not (kind == "int" and "float" in kinds):
        return f"{where} {flag}={raw} must be {' or '.join(kinds)}, got {kind}"
    if choices and value is not None and value not in choices:
        shown = ", ".join(str(c) for c in choices[:12]) + (", ..." if len(choices) > 12 else "")
        return f"{where} {flag}={raw} is not one of: {shown}"
    parsed[dest] = value
    return None


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _owned_note(dest: str) -> str:
    return f" (better: {OWNED_ARGS[dest]})" if dest in OWNED_ARGS else ""


def _hint(dest: str) -> str:
    if dest in _GONE:
        return f": {_GONE[dest]}"
    close = difflib.get_close_matches(dest, ENGINE_ARGS.keys(), n=1, cutoff=0.8)
    return f" (did you mean --{close[0].replace('_', '-')}?)" if close else ""
