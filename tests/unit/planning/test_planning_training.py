"""Training plans: LoRA / QLoRA / full memory against hand computations, GPU counts, reasons."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from bigmodel_operator.planning import (
    ModelShape,
    PlanningError,
    TrainingPlan,
    lookup_gpu,
    lora_parameters,
    plan_training,
)

Shape = Callable[[str], ModelShape]
GIB = 2**30
H100 = lookup_gpu("NVIDIA-H100-80GB-HBM3")
L4 = lookup_gpu("NVIDIA-L4")
LLAMA_8B = "meta-llama--Llama-3.1-8B"
LLAMA_70B = "meta-llama--Llama-3.1-70B"
P_8B = 8_030_261_248

# Llama-3.1-8B, batch 8 × 2048 tokens = 16384 tokens:
TOKENS = 8 * 2048
# activations per token per layer: 2 B · (4h norms + 2·q (q, attention out) + 2·kv (k, v) + 4i SwiGLU)
PER_LAYER = 2 * (4 * 4096 + 2 * 4096 + 2 * 1024 + 4 * 14336)  # 167,936 B ≈ 41·h
HEAD = 4 * 4096  # final norm + lm_head inputs
ACT_CHECKPOINTED = TOKENS * (32 * 2 * 4096 + PER_LAYER + HEAD)  # layer inputs + one recomputed layer
ACT_ALL = TOKENS * (32 * PER_LAYER + HEAD)
LOGITS = TOKENS * 128256 * 4
OVERHEAD = int(1.5 * GIB)


def test_lora_parameter_counts(shape: Shape) -> None:
    llama = shape(LLAMA_8B)
    # r · (in + out) per matrix: q, o 4096→4096; k, v 4096→1024; gate, up 4096→14336; down 14336→4096
    per_layer = 16 * (2 * 8192 + 2 * 5120 + 3 * 18432)
    assert lora_parameters(llama, 16) == 32 * per_layer == 41_943_040
    assert lora_parameters(llama, 16, ["all-linear"]) == 41_943_040
    assert lora_parameters(llama, 8, ["q_proj", "v_proj"]) == 32 * 8 * (8192 + 5120) == 3_407_872
    mixtral = shape("mistralai--Mixtral-8x7B-v0.1")
    assert lora_parameters(mixtral, 8, ["w1", "w2", "w3"]) == 32 * 8 * 8 * 3 * (4096 + 14336)
    with pytest.raises(PlanningError, match="unknown LoRA target module 'c_attn'"):
        lora_parameters(llama, 8, ["c_attn"])


def test_lora_8b_fits_one_h100_with_checkpointing_by_hand(shape: Shape) -> None:
    plan = plan_training(shape(LLAMA_8B), H100, method="lora", batch_size=8, max_seq_length=2048)
    state = 41_943_040 * 16  # fp32 adapter + fp32 grad + 2 AdamW moments
    total = 2 * P_8B + state + ACT_CHECKPOINTED + LOGITS + OVERHEAD
    assert plan.fits
    assert (plan.gpus_needed, plan.sharded) == (1, False)
    assert plan.trainable_parameters == 41_943_040
    assert plan.activation_gib == plan.activation_gib_with_checkpointing == round(ACT_CHECKPOINTED / GIB, 2) == 6.81
    assert plan.activation_gib_without_checkpointing == round(ACT_ALL / GIB, 2) == 82.25
    assert plan.logits_gib == 7.83
    assert plan.total_gib == plan.per_gpu_gib == round(total / GIB, 2) == 31.72
    assert plan.usable_per_gpu_gib == 75.22  # 95 % of 79.18 GiB
    assert "0.52%" in plan.summary


def test_lora_8b_without_checkpointing_does_not_fit_and_says_why(shape: Shape) -> None:
    plan = plan_training(
        shape(LLAMA_8B), H100, method="lora", batch_size=8, max_seq_length=2048, gradient_checkpointing=False
    )
    assert not plan.fits
    assert plan.activation_gib == 82.25  # more than the whole GPU: sharding cannot help
    assert plan.gpus_needed == 1
    assert "sharding does not reduce them" in plan.reason
    assert "enable gradient checkpointing" in plan.reason
    # One sequence at a time fits without checkpointing.
    small = plan_training(shape(LLAMA_8B), H100, batch_size=1, max_seq_length=2048, gradient_checkpointing=False)
    assert small.fits


def test_qlora_70b_fits_one_80gb_gpu(shape: Shape) -> None:
    plan = plan_training(shape(LLAMA_70B), H100, method="qlora", batch_size=1, max_seq_length=2048)
    linear = 80 * (2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672)
    nf4 = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits + double-quantized absmax (QLoRA: 0.127 bit/param)
    assert plan.weight_bytes == round(linear * nf4) + (70_553_706_496 - linear) * 2
    assert plan.weight_gib == 36.8
    assert plan.weight_format == "nf4 double-quant"
    assert plan.overhead_gib == round((OVERHEAD + 8192 * 28672 * 2) / GIB, 2)  # + dequantized MLP matrix
    assert (plan.fits, plan.gpus_needed) == (True, 1)
    assert plan.per_gpu_gib < 50


def test_lora_70b_in_bf16_is_sharded(shape: Shape) -> None:
    plan = plan_training(shape(LLAMA_70B), H100, method="lora", batch_size=1, max_seq_length=2048)
    assert (plan.fits, plan.sharded, plan.gpus_needed) == (True, True, 3)


def test_full_8b_needs_several_gpus_by_hand(shape: Shape) -> None:
    plan = plan_training(shape(LLAMA_8B), H100, method="full", batch_size=8, max_seq_length=2048)
    # 16 B/param: bf16 weight 2 + bf16 grad 2 + fp32 master 4 + AdamW 8, sharded ZeRO-3 style.
    assert plan.trainable_state_gib == round(14 * P_8B / GIB, 2)
    sharded = 16 * P_8B
    fixed = ACT_CHECKPOINTED + LOGITS + OVERHEAD
    gather = 2 * (2 * P_8B - 2 * 128256 * 4096) // 32  # two gathered layers
    usable = int(0.95 * 79.18 * GIB)
    assert fixed + sharded // 2 + gather > usable  # 2 GPUs: 76.9 GiB each
    assert fixed + -(-sharded // 3) + gather <= usable  # 3 GPUs: 56.9 GiB each
    assert (plan.fits, plan.gpus_needed, plan.sharded) == (True, 3, True)
    assert "sharded (FSDP/ZeRO-3)" in plan.summary


def test_full_fine_tune_limited_by_the_gpu_count(shape: Shape) -> None:
    plan = plan_training(shape(LLAMA_8B), H100, method="full", batch_size=8, max_seq_length=2048, max_gpus=2)
    assert not plan.fits
    assert plan.gpus_needed == 2
    assert "2 × NVIDIA-H100-80GB-HBM3 sharded" in plan.reason
    assert "allow more GPUs" in plan.reason


def test_full_in_fp32_is_still_16_bytes_per_parameter(shape: Shape) -> None:
    plan = plan_training(shape(LLAMA_8B), H100, method="full", dtype="float32")
    # fp32 weight 4 + fp32 grad 4 + AdamW 8: no separate master copy.
    assert (plan.weight_bytes, plan.trainable_state_gib) == (4 * P_8B, round(12 * P_8B / GIB, 2))


def test_unfused_attention_adds_score_matrices(shape: Shape) -> None:
    llama = shape(LLAMA_8B)
    fused = plan_training(llama, H100, batch_size=1, max_seq_length=4096, gradient_checkpointing=False)
    eager = plan_training(
        llama, H100, batch_size=1, max_seq_length=4096, gradient_checkpointing=False, fused_attention=False
    )
    extra = 4096 * 32 * 5 * 32 * 4096  # tokens · layers · 5·a·s (Korthikanti et al.)
    assert eager.activation_gib - fused.activation_gib == pytest.approx(extra / GIB, abs=0.01)


def test_qlora_8b_fits_an_l4(shape: Shape) -> None:
    plan = plan_training(shape(LLAMA_8B), L4, method="qlora", batch_size=1, max_seq_length=2048)
    assert (plan.fits, plan.gpus_needed) == (True, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "dora"}, "method must be"),
        ({"rank": 0}, "rank"),
        ({"batch_size": 0}, "batchSize"),
        ({"dtype": "fp8"}, "training dtype"),
        ({"max_gpus": 0}, "GPU count"),
        ({"target_modules": ["nope"]}, "unknown LoRA target module"),
    ],
)
def test_invalid_training_settings_raise(shape: Shape, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanningError, match=message):
        plan_training(shape(LLAMA_8B), H100, **kwargs)


def test_training_plan_status_shape(shape: Shape) -> None:
    plan = plan_training(shape(LLAMA_8B), H100)
    dumped = plan.model_dump(by_alias=True)
    assert {"trainableParameters", "activationGiBWithCheckpointing", "gpusNeeded", "perGpuGiB"} <= set(dumped)
    assert TrainingPlan.model_validate(dumped) == plan
    schema = TrainingPlan.model_json_schema(by_alias=True)
    assert all(prop.get("description") for prop in schema["properties"].values())
