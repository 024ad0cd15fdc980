"""Serving plans: layout choice, max-model-len that fits, reasons, and the status schema."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bigmodel_operator.planning import ModelShape, PlanningError, ServingPlan, lookup_gpu, plan_serving

Shape = Callable[[str], ModelShape]
GIB = 2**30
H100 = lookup_gpu("NVIDIA-H100-80GB-HBM3")
A100 = lookup_gpu("NVIDIA-A100-SXM4-80GB")
L4 = lookup_gpu("NVIDIA-L4")
T4 = lookup_gpu("Tesla-T4")
LLAMA_8B = "meta-llama--Llama-3.1-8B"
LLAMA_70B = "meta-llama--Llama-3.1-70B"
LLAMA_405B = "meta-llama--Llama-3.1-405B"
AWQ_8B = "hugging-quants--Meta-Llama-3.1-8B-Instruct-AWQ-INT4"


def test_llama_8b_on_one_h100_by_hand(shape: Shape) -> None:
    plan = plan_serving(shape(LLAMA_8B), H100)
    # Overhead: 1.8 GiB non-torch + 0.5 GiB CUDA graphs + profiling peak
    # 8192 tokens · (4·4096 + 4·14336) · 2 B + 256 seqs · 128256 · 4 B (fp32 logits).
    overhead = int(2.3 * GIB) + 8192 * (4 * 4096 + 4 * 14336) * 2 + 256 * 128256 * 4
    usable = int(79.18 * 0.9 * GIB)
    capacity = (usable - 16_060_522_496 - overhead) // (128 * 1024)
    assert plan.fits
    assert plan.reason == ""
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.gpus_per_replica) == (1, 1, 1)
    assert plan.kv_cache_capacity_tokens == capacity  # ≈ 432k tokens
    assert plan.max_model_len == 131072  # the full native context fits, so it is not capped
    assert plan.kv_cache_gib == 16.0  # 131072 tokens × 128 KiB
    assert plan.weight_gib == 14.96
    assert plan.overhead_gib == round(overhead / GIB, 2) == 3.55
    assert plan.total_gib_per_replica == plan.per_gpu_gib == round((16_060_522_496 + 16 * GIB + overhead) / GIB, 2)
    assert plan.usable_per_gpu_gib == 71.26
    assert plan.parameters_human == "8.03B"
    assert "1 × NVIDIA-H100-80GB-HBM3" in plan.summary
    assert "maxModelLen 131072" in plan.summary


def test_user_max_model_len_is_kept(shape: Shape) -> None:
    plan = plan_serving(shape(LLAMA_8B), H100, max_model_len=8192)
    assert (plan.max_model_len, plan.kv_cache_gib, plan.tensor_parallel_size) == (8192, 1.0, 1)


def test_concurrency_needs_more_kv_and_a_larger_layout(shape: Shape) -> None:
    # 4 × 131072 tokens × 128 KiB = 64 GiB of KV cache: more than one H100 has left after weights.
    plan = plan_serving(shape(LLAMA_8B), H100, max_model_len=131072, concurrency=4)
    assert (plan.fits, plan.tensor_parallel_size, plan.kv_cache_gib) == (True, 2, 64.0)


def test_llama_70b_bf16_needs_tp4_on_h100(shape: Shape) -> None:
    plan = plan_serving(shape(LLAMA_70B), H100)
    assert plan.weight_bytes == 2 * 70_553_706_496  # 141.1 GB
    assert (plan.fits, plan.tensor_parallel_size, plan.pipeline_parallel_size) == (True, 4, 1)
    assert plan.max_model_len == 131072
    assert plan.kv_cache_bytes_per_token == 2 * 80 * 8 * 128 * 2


def test_llama_70b_bf16_does_not_fit_two_h100_but_fp8_does(shape: Shape) -> None:
    # 65.7 GiB of weights per GPU + 5.4 GiB overhead > 71.26 GiB usable.
    plan = plan_serving(shape(LLAMA_70B), H100, max_gpus=2)
    assert not plan.fits
    assert "2 × NVIDIA-H100-80GB-HBM3 (79.18 GiB, 90% usable) give 71.26 GiB each" in plan.reason
    fp8 = plan_serving(shape(LLAMA_70B), H100, max_gpus=2, quantization="fp8")
    assert (fp8.fits, fp8.tensor_parallel_size, fp8.weight_format) == (True, 2, "fp8 8-bit")


def test_llama_70b_on_eight_l4_does_not_fit(shape: Shape) -> None:
    # TP 8: 16.4 GiB weights + 4.8 GiB overhead per GPU > 19.84 GiB usable.
    plan = plan_serving(shape(LLAMA_70B), L4, max_gpus=8)
    assert not plan.fits
    assert plan.tensor_parallel_size == 8
    assert plan.reason.startswith("needs ")
    assert "8 × NVIDIA-L4 (22.04 GiB, 90% usable) give 19.84 GiB each" in plan.reason
    assert "quantized" in plan.reason
    assert "does not fit" in plan.summary


def test_llama_70b_on_l4_spills_to_a_second_node_when_allowed(shape: Shape) -> None:
    plan = plan_serving(shape(LLAMA_70B), L4)
    assert (plan.fits, plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.gpus_per_replica) == (
        True,
        8,
        2,
        16,
    )


def test_llama_405b_needs_pipeline_stages(shape: Shape) -> None:
    plan = plan_serving(shape(LLAMA_405B), H100)
    assert plan.parameters == 405_853_388_800
    assert (plan.fits, plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.gpus_per_replica) == (
        True,
        8,
        2,
        16,
    )
    fp8 = plan_serving(shape(LLAMA_405B), H100, quantization="fp8")
    assert (fp8.fits, fp8.tensor_parallel_size, fp8.pipeline_parallel_size) == (True, 8, 1)
    h200 = plan_serving(shape(LLAMA_405B), lookup_gpu("NVIDIA-H200"))
    assert (h200.fits, h200.tensor_parallel_size, h200.pipeline_parallel_size) == (True, 8, 1)


def test_mixtral_on_a100_80gb(shape: Shape) -> None:
    plan = plan_serving(shape("mistralai--Mixtral-8x7B-v0.1"), A100)
    assert (plan.fits, plan.tensor_parallel_size, plan.max_model_len) == (True, 2, 32768)
    assert plan.weight_gib == 86.99
    assert plan.active_parameters == pytest.approx(12.9e9, rel=0.005)


def test_awq_8b_fits_one_l4(shape: Shape) -> None:
    plan = plan_serving(shape(AWQ_8B), L4)
    assert (plan.fits, plan.tensor_parallel_size, plan.weight_format) == (True, 1, "awq 4-bit g128")
    assert plan.weight_gib == 5.33
    assert 32768 <= plan.max_model_len < 131072
    assert plan.max_model_len % 1024 == 0
    assert plan.max_model_len <= plan.kv_cache_capacity_tokens
    # The engine's kernel choice does not change the checkpoint's format.
    assert plan_serving(shape(AWQ_8B), L4, quantization="awq_marlin").weight_bytes == plan.weight_bytes


def test_bf16_8b_on_l4_prefers_two_gpus_for_a_useful_context(shape: Shape) -> None:
    plan = plan_serving(shape(LLAMA_8B), L4)
    assert (plan.tensor_parallel_size, plan.max_model_len >= 32768) == (2, True)
    # Limited to one GPU it still fits, with the context that is left (≈ 10.9k tokens).
    single = plan_serving(shape(LLAMA_8B), L4, max_gpus=1)
    assert (single.fits, single.tensor_parallel_size, single.max_model_len) == (True, 1, 10240)


def test_turing_serves_bf16_checkpoints_in_fp16(shape: Shape) -> None:
    plan = plan_serving(shape("meta-llama--Llama-3.2-1B"), T4)
    assert (plan.fits, plan.weight_format, plan.weight_bytes) == (True, "float16", 2 * 1_235_814_400)


def test_fp8_kv_cache_halves_kv_bytes(shape: Shape) -> None:
    plan = plan_serving(shape(LLAMA_8B), H100, kv_cache_dtype="fp8", max_model_len=8192)
    assert (plan.kv_cache_bytes_per_token, plan.kv_cache_gib) == (64 * 1024, 0.5)


def test_kv_heads_are_replicated_beyond_their_count(shape: Shape) -> None:
    small = shape("meta-llama--Llama-3.2-1B")  # 8 KV heads
    tp8 = plan_serving(small, H100, tensor_parallel_size=8, max_model_len=8192)
    tp16 = plan_serving(small, H100, tensor_parallel_size=16, gpus_per_node=16, max_model_len=8192)
    assert tp16.kv_cache_gib == 2 * tp8.kv_cache_gib  # every rank keeps one head


def test_mla_model_plans_its_compressed_cache(shape: Shape) -> None:
    plan = plan_serving(shape("deepseek-ai--DeepSeek-V2-Lite"), H100)
    assert (plan.fits, plan.tensor_parallel_size, plan.max_model_len) == (True, 1, 163840)
    assert plan.kv_cache_bytes_per_token == 27 * 576 * 2


def test_unknown_context_length_defaults_like_vllm(shape: Shape) -> None:
    no_len = shape(LLAMA_8B).model_copy(update={"max_position_embeddings": None})
    assert plan_serving(no_len, H100).max_model_len == 2048


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tensor_parallel_size": 3}, "num_attention_heads 32"),
        ({"tensor_parallel_size": 2, "pipeline_parallel_size": 2, "max_gpus": 2}, "exceeds the 2 GPUs"),
        ({"pipeline_parallel_size": 33}, "32 layers"),
        ({"max_model_len": 200_000}, "context length 131072"),
        ({"gpu_memory_utilization": 1.5}, "gpuMemoryUtilization"),
        ({"concurrency": 0}, "concurrency"),
        ({"max_gpus": 0}, "GPU count"),
        ({"quantization": "awq"}, "needs a checkpoint quantized"),
        ({"dtype": "fp8"}, "quantization: fp8"),
        ({"dtype": "int4"}, "unsupported dtype"),
        ({"kv_cache_dtype": "int2"}, "kvCacheDtype"),
    ],
)
def test_invalid_engine_settings_raise(shape: Shape, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanningError, match=message):
        plan_serving(shape(LLAMA_8B), H100, **kwargs)


def test_tp_must_respect_the_quantization_group(shape: Shape) -> None:
    awq = shape(AWQ_8B)
    assert awq.quantization is not None
    coarse = awq.model_copy(update={"quantization": awq.quantization.model_copy(update={"group_size": 1024})})
    with pytest.raises(PlanningError, match="quantization group 1024"):
        plan_serving(coarse, H100, tensor_parallel_size=8)
    with pytest.raises(PlanningError, match="num_attention_heads 28"):
        plan_serving(shape("Qwen--Qwen2.5-7B"), H100, tensor_parallel_size=8)


def test_plan_is_a_compact_camel_case_status_object(shape: Shape) -> None:
    plan = plan_serving(shape(LLAMA_8B), H100)
    dumped = plan.model_dump(by_alias=True)
    assert list(dumped) == [
        "parameters", "parametersHuman", "activeParameters", "weightFormat", "weightBytes", "weightGiB",
        "kvCacheBytesPerToken", "kvCacheGiB", "overheadGiB", "totalGiBPerReplica", "perGpuGiB", "gpuProduct",
        "gpuMemoryGiB", "usablePerGpuGiB", "tensorParallelSize", "pipelineParallelSize", "gpusPerReplica",
        "maxModelLen", "concurrency", "maxNumSeqs", "kvCacheCapacityTokens", "fits", "reason", "summary",
    ]  # fmt: skip
    assert ServingPlan.model_validate(dumped) == plan
    with pytest.raises(ValueError, match="extra"):
        ServingPlan.model_validate({**dumped, "surprise": 1})
    schema = ServingPlan.model_json_schema(by_alias=True)
    assert schema["additionalProperties"] is False
    assert all(prop.get("description") for prop in schema["properties"].values())


def test_max_num_seqs_is_the_engines_setting_and_sizes_the_activation_peak(shape: Shape) -> None:
    default = plan_serving(shape(LLAMA_8B), H100)
    wide = plan_serving(shape(LLAMA_8B), H100, max_num_seqs=1024)
    assert default.max_num_seqs == 256  # vLLM's default, not a cap of our own
    assert wide.max_num_seqs == 1024
    assert wide.overhead_gib > default.overhead_gib  # more sequences, more fp32 logits in the profiling pass
