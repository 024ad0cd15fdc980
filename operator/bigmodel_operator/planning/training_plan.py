"""The training plan: GPU memory of a LoRA, QLoRA or full fine-tune, and how many GPUs it needs.

Per GPU, in bytes (P parameters, b micro-batch, s sequence length; h, L, V as in ``estimate``):

- weights: ``P·2`` in bf16/fp16; QLoRA keeps the decoder's linear layers in NF4 with double
  quantization (0.516 B/param, QLoRA paper) and the rest in bf16, plus one bf16 copy of the largest
  matrix while bitsandbytes dequantizes it;
- trainable state, 16 B per trainable parameter. LoRA: PEFT keeps adapters in fp32 (4) + fp32
  gradient (4) + AdamW moments (2·4). Full, mixed precision: bf16 weight (2) + bf16 gradient (2) +
  fp32 master weight (4) + AdamW moments (8) — the ZeRO paper's 16·P (fp32 training: 4+4+8);
- activations ``b·s·(L·layer + adapters + 6·h)`` without checkpointing, ``b·s·(L·2·h + layer +
  adapters/L + 6·h)`` with it (layer inputs kept, one layer recomputed) — see ``activations``;
- logits: ``b·s·V·14`` B at the loss's peak (see ``activations``);
- ``TRAINING_OVERHEAD_GIB`` = 1.5 GiB per GPU (CUDA context, cuBLAS and NCCL workspaces), and
  only ``TRAINING_USABLE_FRACTION`` = 95 % of the memory is planned, for allocator fragmentation.

The parts are added although the loss's peak and a checkpointed layer's recomputation happen at
different times: with checkpointing the plan is a few GiB conservative (Llama-3.1-8B LoRA, batch
8 × 2,048: 51.7 GiB planned before overhead, 47.1 GiB measured peak on an H100).

When one GPU is not enough, weights and trainable state are sharded FSDP/ZeRO-3 style over N GPUs
(each also holds two gathered layers); activations do not shrink, ``batch_size`` is per GPU.

A SIGTERM (preemption, node drain, deletion) lets the trainer finish its optimizer step and write
a checkpoint; ``checkpoint_gib`` (fp32 trainable weights + two AdamW moments, 12 B per trainable
parameter) and ``micro_batch_seconds`` (6·P FLOPs per token at ``STEP_MFU`` = 25 % of the GPU's
datasheet bf16 rate, 100 TFLOP/s when unknown) size the Job's ``terminationGracePeriodSeconds``
(builders/training.py) instead of Kubernetes' 30 s default.

Families the trainer cannot train correctly are refused before any memory is planned
(``PlanningError`` with reason ``UnsupportedModelFamily``): hybrid linear-attention and state-space
models (Qwen3-Next, Jamba, Mamba, MiniMax, ...) carry a recurrent state from token to token that
the packed batches would leak from one example into the next (only attention layers take the
block-diagonal mask derived from the position ids), and their fused kernels have no CPU path.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from .activations import (
    LOGITS_BYTES,
    adapter_input_bytes_per_token,
    layer_activation_bytes,
    linear_shapes,
    lora_parameters,
    lora_targets,
)
from .errors import PlanningError
from .estimate import count_parameters
from .gpus import GpuProduct
from .model_config import ModelShape
from .precision import DTYPE_BYTES, bnb_4bit, normalize_dtype
from .units import GIB, PlanModel, gib, human_params

TRAINING_OVERHEAD_GIB = 1.5
TRAINING_USABLE_FRACTION = 0.95
LORA_STATE_BYTES = 16  # fp32 adapter + fp32 grad + two fp32 AdamW moments
FULL_TOTAL_BYTES = 16  # bf16 weight + bf16 grad + fp32 master + two fp32 AdamW moments (ZeRO paper)
DEFAULT_MAX_NODES = 8
CHECKPOINT_BYTES = 12  # per trainable parameter: fp32 weight + two fp32 AdamW moments
STEP_MFU = 0.25  # pessimistic: a step rarely runs slower than this fraction of the datasheet peak
UNKNOWN_GPU_TFLOPS = 100.0
UNSUPPORTED_MODEL_FAMILY = "UnsupportedModelFamily"
# model_type prefixes (HF) of families whose layers keep a recurrent state across tokens.
RECURRENT_FAMILIES = (
    "qwen3_next", "qwen3_5", "qwen4_exp", "jamba", "mamba", "mamba2", "falcon_mamba", "falcon_h1", "bamba",
    "zamba", "zamba2", "nemotron_h", "granitemoehybrid", "lfm2", "lfm3", "minimax", "plamo2", "recurrent_gemma",
    "rwkv", "xlstm", "kimi_linear", "bailing_hybrid", "glm5_next", "lara_mini", "olmo_hybrid", "dory",
)  # fmt: skip
_RECURRENT_WORDS = re.compile(r"mamba|hybrid|linear|rwkv|xlstm|recurrent|ssm|deltanet", re.IGNORECASE)

Method = Literal["lora", "qlora", "full"]


class TrainingPlan(PlanModel):
    """GPU memory plan for a fine-tuning job."""

    method: str = Field(description="lora, qlora or full.")
    parameters: int = Field(description="Total parameters of the base model.")
    parameters_human: str = Field(description='Parameters in decimal units, e.g. "8.03B".')
    trainable_parameters: int = Field(description="Parameters the optimizer updates.")
    weight_format: str = Field(description='Base weight storage, e.g. "bfloat16" or "nf4".')
    weight_bytes: int = Field(description="Bytes of the base weights.")
    weight_gib: float = Field(description="Base weights in GiB.")
    trainable_state_gib: float = Field(description="Trainable weights, gradients, AdamW state.")
    activation_gib: float = Field(description="Activations per GPU as configured.")
    activation_gib_with_checkpointing: float = Field(description="Activations per GPU, checkpointed.")
    activation_gib_without_checkpointing: float = Field(description="Activations per GPU, all kept.")
    gradient_checkpointing: bool = Field(description="Whether the plan assumes checkpointing.")
    logits_gib: float = Field(description="fp32 logits for the loss, per GPU.")
    overhead_gib: float = Field(description="CUDA context and workspaces, per GPU.")
    total_gib: float = Field(description="Everything on one GPU (unsharded).")
    per_gpu_gib: float = Field(description="What each GPU needs with the chosen sharding.")
    gpu_product: str = Field(description="GPU product planned for.")
    gpu_memory_gib: float = Field(description="Memory of one GPU, GiB.")
    usable_per_gpu_gib: float = Field(description="Memory the plan may use per GPU (95 %).")
    gpus_needed: int = Field(description="GPUs for one training job.")
    sharded: bool = Field(description="Weights and optimizer state sharded (FSDP/ZeRO-3).")
    checkpoint_gib: float = Field(default=0.0, description="What one resumable checkpoint writes (GiB).")
    micro_batch_seconds: float = Field(
        default=0.0, description="Pessimistic time of one micro-batch (forward + backward), seconds."
    )
    fits: bool = Field(description="Whether the job fits within the allowed GPUs.")
    reason: str = Field(default="", description="Why it does not fit; empty when it fits.")
    summary: str = Field(description="One line for humans.")


def unsupported_family(shape: ModelShape) -> str | None:
    """Why the trainer cannot train this model family correctly, or None."""
    names = [shape.model_type or "", *shape.architectures]
    known = (shape.model_type or "").startswith(RECURRENT_FAMILIES)
    if not known and not any(_RECURRENT_WORDS.search(name) for name in names):
        return None
    family = shape.model_type or shape.architectures[0]
    return (
        f"{family} has linear-attention or state-space (recurrent) layers; the trainer packs several examples "
        "into one sequence and only attention layers take the per-example mask, so the recurrent state would "
        "carry from one example into the next: this family is not supported for fine-tuning"
    )


def plan_training(
    shape: ModelShape,
    gpu: GpuProduct,
    *,
    method: Method = "lora",
    rank: int = 16,
    target_modules: list[str] | None = None,
    batch_size: int = 1,
    max_seq_length: int = 2048,
    gradient_checkpointing: bool = True,
    dtype: str = "bfloat16",
    fused_attention: bool = True,
    gpus_per_node: int = 8,
    max_gpus: int | None = None,
) -> TrainingPlan:
    """Plan a fine-tuning job of ``shape`` on ``gpu`` (formulas in the module docstring).

    ``batch_size`` is the per-GPU micro-batch; ``max_gpus`` (the job's GPU count, if set) bounds
    the sharding, otherwise up to 8 nodes of ``gpus_per_node``. Returns ``fits=False`` with a reason
    when no allowed GPU count fits; raises :class:`PlanningError` for invalid settings.
    """
    if method not in ("lora", "qlora", "full"):
        raise PlanningError(f"method must be lora, qlora or full, got {method!r}")
    refused = unsupported_family(shape)
    if refused:
        raise PlanningError(refused, reason=UNSUPPORTED_MODEL_FAMILY)
    for name, value in (("rank", rank), ("batchSize", batch_size), ("maxSeqLength", max_seq_length)):
        if value < 1:
            raise PlanningError(f"{name} must be at least 1, got {value}")
    if max_gpus is not None and max_gpus < 1:
        raise PlanningError(f"the GPU count must be at least 1, got {max_gpus}")
    try:
        dtype = normalize_dtype(dtype)
    except ValueError as exc:
        raise PlanningError(str(exc)) from exc
    if dtype == "float8":
        raise PlanningError("training dtype must be bfloat16, float16 or float32")
    if dtype == "bfloat16" and not gpu.supports_bf16:
        dtype = "float16"
    act = DTYPE_BYTES[dtype]

    params = count_parameters(shape)
    if method == "qlora":
        nf4 = bnb_4bit(double_quant=True)
        largest = max(i * o for mats in linear_shapes(shape).values() for i, o, _, _ in mats)
        weights = round(params.linear * nf4.bytes_per_weight) + (params.total - params.linear) * act
        dequant_buffer = largest * act
        weight_format = "nf4 double-quant"
    else:
        weights, dequant_buffer, weight_format = params.total * act, 0, dtype
    if method == "full":
        # 16 B/param in all: the weight's own bytes plus gradient, master copy and moments.
        trainable, state = params.total, params.total * (FULL_TOTAL_BYTES - act)
    else:
        trainable = lora_parameters(shape, rank, target_modules)
        state = trainable * LORA_STATE_BYTES

    tokens = batch_size * max_seq_length
    h, layers = shape.hidden_size, shape.num_hidden_layers
    scale = act // 2  # the 16-bit counts double in fp32 training
    per_layer = scale * layer_activation_bytes(
        shape,
        trainable_base=method == "full",
        quantized_base=method == "qlora",
        seq_len=max_seq_length,
        fused_attention=fused_attention,
    )
    adapters = 0
    if method != "full" and dtype != "float32":  # fp32 input copies for the fp32 adapters
        adapters = adapter_input_bytes_per_token(shape, lora_targets(shape, target_modules))
    head = scale * 6 * h  # final norm's fp32 input and lm_head's input
    act_full = tokens * (layers * per_layer + adapters + head)
    act_ckpt = tokens * (layers * scale * 2 * h + per_layer + adapters // layers + head)
    activations = act_ckpt if gradient_checkpointing else act_full
    logits = tokens * shape.vocab_size * LOGITS_BYTES
    overhead = int(TRAINING_OVERHEAD_GIB * GIB) + dequant_buffer
    usable = int(gpu.memory_gib * TRAINING_USABLE_FRACTION * GIB)
    fixed = activations + logits + overhead
    shardable = weights + state
    gather = 2 * (weights - params.embedding * act) // layers  # two gathered layers under FSDP

    def need(n: int) -> int:
        return fixed + shardable if n == 1 else fixed + -(-shardable // n) + gather

    allowed = max_gpus if max_gpus is not None else gpus_per_node * DEFAULT_MAX_NODES
    counts = [n for n in range(1, gpus_per_node + 1) if n <= allowed]
    counts += list(range(2 * gpus_per_node, allowed + 1, gpus_per_node))
    chosen = next((n for n in counts if need(n) <= usable), None)
    # Sharding cannot help when what every GPU holds anyway is already too much.
    hopeless = fixed + gather >= usable
    n = chosen or (1 if hopeless else counts[-1])
    plan = TrainingPlan(
        method=method,
        parameters=params.total,
        parameters_human=human_params(params.total),
        trainable_parameters=trainable,
        weight_format=weight_format,
        weight_bytes=weights,
        weight_gib=gib(weights),
        trainable_state_gib=gib(state),
        activation_gib=gib(activations),
        activation_gib_with_checkpointing=gib(act_ckpt),
        activation_gib_without_checkpointing=gib(act_full),
        gradient_checkpointing=gradient_checkpointing,
        logits_gib=gib(logits),
        overhead_gib=gib(overhead),
        total_gib=gib(fixed + shardable),
        per_gpu_gib=gib(need(n)),
        gpu_product=gpu.product,
        gpu_memory_gib=gpu.memory_gib,
        usable_per_gpu_gib=gib(usable),
        gpus_needed=n,
        sharded=n > 1,
        checkpoint_gib=gib(trainable * CHECKPOINT_BYTES),
        micro_batch_seconds=round(
            6 * params.total * tokens / (STEP_MFU * (gpu.bf16_tflops or UNKNOWN_GPU_TFLOPS) * 1e12 * n), 2
        ),
        fits=chosen is not None,
        summary="",
    )
    share = f"{trainable / params.total:.2%}" if method != "full" else "all"
    what = (
        f"{method} of {plan.parameters_human} {shape.name} ({human_params(trainable)} trainable, {share}), "
        f"batch {batch_size} × {max_seq_length} tokens"
    )
    where = f"{n} × {gpu.product}" + (" sharded (FSDP/ZeRO-3)" if n > 1 else "")
    if chosen is not None:
        plan.summary = f"{what}: {plan.per_gpu_gib:g} of {plan.usable_per_gpu_gib:g} GiB per GPU on {where}"
        return plan
    hints = [] if gradient_checkpointing else ["enable gradient checkpointing"]
    hints += ["lower batchSize or maxSeqLength"] + (["use qlora"] if method != "qlora" and not hopeless else [])
    on_each = f"activations {plan.activation_gib:g} + logits {plan.logits_gib:g} + overhead {plan.overhead_gib:g}"
    if hopeless:
        plan.reason = (
            f"{on_each} GiB are needed on every GPU, sharding does not reduce them, but "
            f"{gpu.product} gives {plan.usable_per_gpu_gib:g} GiB; {', '.join(hints)}"
        )
    else:
        plan.reason = (
            f"needs {plan.per_gpu_gib:g} GiB per GPU on {where} (weights {plan.weight_gib:g} + optimizer state "
            f"{plan.trainable_state_gib:g} over {n} GPUs, {on_each} on each) but {gpu.product} gives "
            f"{plan.usable_per_gpu_gib:g} GiB; {', '.join(hints)} or allow more GPUs"
        )
    plan.summary = f"{what} does not fit on {where}"
    return plan
