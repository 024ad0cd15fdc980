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
from bigmodel_operator.planning.activations import adapter_input_bytes_per_token, layer_activation_bytes, lora_targets

Shape = Callable[[str], ModelShape]
GIB = 2**30
H100 = lookup_gpu("NVIDIA-H100-80GB-HBM3")
L4 = lookup_gpu("NVIDIA-L4")
LLAMA_8B = "meta-llama--Llama-3.1-8B"
LLAMA_70B = "meta-llama--Llama-3.1-70B"
P_8B = 8_030_261_248

# Llama-3.1-8B (h 4096, q 4096, kv 1024, i 14336, 32 layers), batch 8 × 2048 tokens:
TOKENS = 8 * 2048
# Per token and layer, frozen base: fp32 norm inputs 8h + q, k, v, attention out (4q + 4kv) + gate,
# up, silu(gate) 6i; a trainable base adds the norms' and linears' bf16 inputs 8h + 2i.
FROZEN = 8 * 4096 + 4 * 4096 + 4 * 1024 + 6 * 14336  # 139,264 B
FULL = FROZEN + 8 * 4096 + 2 * 14336  # 200,704 B
# PEFT's fp32 copy of each adapted module's input (all-linear: q, k, v, o, gate, up, down), whole model.
ADAPTERS = 4 * 32 * (3 * 4096 + 4096 + 2 * 4096 + 14336)  # 4,980,736 B per token
HEAD = 6 * 4096  # final norm's fp32 input + lm_head's bf16 input
LORA_CHECKPOINTED = TOKENS * (32 * 2 * 4096 + FROZEN + ADAPTERS // 32 + HEAD)  # inputs + 1 layer
LORA_ALL = TOKENS * (32 * FROZEN + ADAPTERS + HEAD)
FULL_CHECKPOINTED = TOKENS * (32 * 2 * 4096 + FULL + HEAD)
LOGITS = TOKENS * 128256 * 14  # bf16 logits + fp32 copy + log-softmax + its gradient
OVERHEAD = int(1.5 * GIB)


@pytest.mark.parametrize(
    ("name", "method", "measured"),
    [
        # Peak-memory delta per 2,048-token sequence on an H100 (torch 2.11, transformers 5.17,
        # peft 0.21, SDPA, no checkpointing), logits (14 B each) taken out, per token and layer.
        (LLAMA_8B, "lora", 296_240),
        ("meta-llama--Llama-3.2-1B", "lora", 159_050),
        ("meta-llama--Llama-3.2-1B", "full", 109_200),
    ],
)
def test_per_layer_activations_match_h100_measurements(shape: Shape, name: str, method: str, measured: int) -> None:
    model = shape(name)
    planned = layer_activation_bytes(model, trainable_base=method == "full", seq_len=2048)
    if method == "lora":
        planned += adapter_input_bytes_per_token(model, lora_targets(model, None)) // model.num_hidden_layers
    assert planned == pytest.approx(measured, rel=0.015)


def test_llama_8b_per_layer_by_hand(shape: Shape) -> None:
    model = shape(LLAMA_8B)
    assert layer_activation_bytes(model, trainable_base=False, seq_len=2048) == FROZEN
    assert layer_activation_bytes(model, trainable_base=True, seq_len=2048) == FULL
    assert adapter_input_bytes_per_token(model, lora_targets(model, ["all-linear"])) == ADAPTERS


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
    total = 2 * P_8B + state + LORA_CHECKPOINTED + LOGITS + OVERHEAD
    assert plan.fits
    assert (plan.gpus_needed, plan.sharded) == (1, False)
    assert plan.trainable_parameters == 41_943_040
    assert plan.activation_gib == plan.activation_gib_with_checkpointing == round(LORA_CHECKPOINTED / GIB, 2) == 8.88
    assert plan.activation_gib_without_checkpointing == round(LORA_ALL / GIB, 2) == 144.38
    assert plan.logits_gib == round(LOGITS / GIB, 2) == 27.4
    # Measured peak on an H100: 47.1 GiB allocated (+ CUDA context); the plan adds the loss's and
    # the recomputation's peaks although they do not coincide, so it is ~5 GiB conservative.
    assert plan.total_gib == plan.per_gpu_gib == round(total / GIB, 2) == 53.36
    assert plan.usable_per_gpu_gib == 75.22  # 95 % of 79.18 GiB
    assert "0.52%" in plan.summary


def test_lora_8b_without_checkpointing_does_not_fit_and_says_why(shape: Shape) -> None:
    plan = plan_training(
        shape(LLAMA_8B), H100, method="lora", batch_size=8, max_seq_length=2048, gradient_checkpointing=False
    )
    assert not plan.fits
    assert plan.activation_gib == 144.38  # more than the whole GPU: sharding cannot help
    assert plan.gpus_needed == 1
    assert "sharding does not reduce them" in plan.reason
    assert "enable gradient checkpointing" in plan.reason
    # One sequence at a time fits without checkpointing: 37.0 GiB measured, 37.05 planned + overhead.
    small = plan_training(shape(LLAMA_8B), H100, batch_size=1, max_seq_length=2048, gradient_checkpointing=False)
    assert small.fits
    assert small.per_gpu_gib - small.overhead_gib == pytest.approx(37.0, abs=0.5)


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
    fixed = FULL_CHECKPOINTED + LOGITS + OVERHEAD
    gather = 2 * (2 * P_8B - 2 * 128256 * 4096) // 32  # two gathered layers
    usable = int(0.95 * 79.18 * GIB)
    assert fixed + -(-sharded // 3) + gather > usable  # 3 GPUs: 77.1 GiB each
    assert fixed + sharded // 4 + gather <= usable  # 4 GPUs: 67.1 GiB each
    assert (plan.fits, plan.gpus_needed, plan.sharded) == (True, 4, True)
    assert plan.per_gpu_gib == round((fixed + sharded // 4 + gather) / GIB, 2)
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
