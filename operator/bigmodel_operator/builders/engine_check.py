"""Check spec.engine.extraArgs before they reach vLLM: a typo should be a condition, not a crash loop."""

from __future__ import annotations

import re

# Flags that a typed field (or the operator itself) already sets; passing them twice is ambiguous.
_OWNED_FLAGS = {
    "--model": "spec.model.uri",
    "--served-model-name": "spec.model.servedName",
    "--revision": "spec.model.revision",
    "--tokenizer": "spec.model.tokenizer",
    "--max-model-len": "spec.engine.maxModelLen",
    "--dtype": "spec.engine.dtype",
    "--quantization": "spec.engine.quantization",
    "-q": "spec.engine.quantization",
    "--kv-cache-dtype": "spec.engine.kvCacheDtype",
    "--gpu-memory-utilization": "spec.engine.gpuMemoryUtilization",
    "--tensor-parallel-size": "spec.engine.tensorParallelSize",
    "-tp": "spec.engine.tensorParallelSize",
    "--pipeline-parallel-size": "spec.engine.pipelineParallelSize",
    "-pp": "spec.engine.pipelineParallelSize",
    "--enable-prefix-caching": "spec.engine.enablePrefixCaching",
    "--no-enable-prefix-caching": "spec.engine.enablePrefixCaching",
    "--max-num-seqs": "spec.engine.maxNumSeqs",
    "--host": "the operator (Ray Serve binds the address)",
    "--port": "the operator (Ray Serve binds the port)",
    "--api-key": "spec.auth.apiKeysSecretRef",
    "--lora-modules": "spec.adapters",
}
_FLAG = re.compile(r"^--?[a-z0-9][a-z0-9-]*$")


def check_extra_args(extra_args: list[str] | None) -> list[str]:
    """Problems with extraArgs, as messages naming the argument (empty when they are fine)."""
    problems: list[str] = []
    expect_flag = True
    for index, arg in enumerate(extra_args or []):
        flag = arg.split("=", 1)[0]
        if flag.startswith("-") and not _is_number(flag):
            if not _FLAG.match(flag):
                problems.append(f"extraArgs[{index}] {arg!r} is not a valid flag (expected --name or --name=value)")
            elif flag in _OWNED_FLAGS:
                problems.append(f"extraArgs[{index}] {flag} is set by {_OWNED_FLAGS[flag]}; use that instead")
            expect_flag = "=" in arg
            continue
        if expect_flag:
            problems.append(f"extraArgs[{index}] {arg!r} is a value without a flag before it")
        expect_flag = True
    return problems


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
