"""Typed engine args -> vLLM AsyncEngineArgs kwargs, checked without vllm installed."""

from __future__ import annotations

from typing import Any

import pytest

from bigmodel_serving.args import parse_serve_args
from bigmodel_serving.engines.vllm_args import InvalidEngineArgsError, parse_extra_args, vllm_engine_kwargs


def _args(**sections: Any) -> Any:
    base: dict[str, Any] = {"model": {"uri": "hf://org/model", "served_name": "m"}, "engine": "vllm"}
    return parse_serve_args({**base, **sections})


def test_typed_args_map_to_vllm_names() -> None:
    kwargs = vllm_engine_kwargs(
        _args(
            model={"uri": "hf://org/model", "revision": "v2", "served_name": "m", "tokenizer": "org/tok"},
            engine_args={
                "max_model_len": 4096,
                "dtype": "bfloat16",
                "quantization": "awq",
                "gpu_memory_utilization": 0.85,
                "enable_prefix_caching": False,
            },
            limits={"max_ongoing_requests": 48},
        )
    )
    assert kwargs == {
        "model": "org/model",
        "served_model_name": ["m"],
        "tokenizer": "org/tok",
        "revision": "v2",
        "dtype": "bfloat16",
        "quantization": "awq",
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.85,
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "enable_prefix_caching": False,
        "max_num_seqs": 48,
    }


def test_mounted_weights_and_adapters() -> None:
    kwargs = vllm_engine_kwargs(
        _args(
            model={"uri": "s3://b/m", "revision": "x", "served_name": "m", "local_path": "/models/m"},
            adapters=[{"name": "a", "uri": "s3://b/a"}, {"name": "b", "uri": "s3://b/b"}],
            engine_args={"tensor_parallel_size": 2},
        )
    )
    assert kwargs["model"] == "/models/m"
    assert "revision" not in kwargs  # a local directory has no revision
    assert kwargs["enable_lora"] is True
    assert kwargs["max_loras"] == 2
    assert kwargs["distributed_executor_backend"] == "ray"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--max-lora-rank=64"], {"max_lora_rank": 64}),
        (["--max-lora-rank", "64"], {"max_lora_rank": 64}),
        (["--enforce-eager"], {"enforce_eager": True}),
        (["--no-enable-chunked-prefill"], {"enable_chunked_prefill": False}),
        (["--kv-cache-dtype=fp8", "--swap-space=4.5"], {"kv_cache_dtype": "fp8", "swap_space": 4.5}),
        (['--override-generation-config={"temperature": 0.2}'], {"override_generation_config": {"temperature": 0.2}}),
    ],
)
def test_extra_args_parse(extra: list[str], expected: dict[str, Any]) -> None:
    assert parse_extra_args(extra) == expected


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["max-lora-rank=4"], r"expected --name\[=value\]"),
        (["--tensor-parallel-size=2"], "engine_args.tensor_parallel_size"),
        (["--model=/other"], "model.uri"),
    ],
)
def test_extra_args_rejected(extra: list[str], message: str) -> None:
    with pytest.raises(InvalidEngineArgsError, match=message):
        parse_extra_args(extra)


def test_extra_args_override_defaults() -> None:
    kwargs = vllm_engine_kwargs(_args(engine_args={"extra_args": ["--max-num-seqs=8"]}))
    assert kwargs["max_num_seqs"] == 8


def test_kwargs_are_accepted_by_vllm() -> None:
    vllm = pytest.importorskip(
        "vllm", reason="vllm is not installed here (its PyPI wheel is CUDA-only); run on the GPU machine"
    )
    kwargs = vllm_engine_kwargs(
        _args(adapters=[{"name": "a", "uri": "s3://b/a"}], engine_args={"extra_args": ["--max-lora-rank=16"]})
    )
    engine_args = vllm.AsyncEngineArgs(**kwargs)  # constructs without loading anything
    assert engine_args.enable_lora is True
    assert engine_args.max_lora_rank == 16
