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

Layout (``nodes`` pods × ``gpus_per_pod`` GPUs, one worker process per GPU): the first layout that
fits, in the order 1, 2, ..., ``gpus_per_node`` GPUs in one pod, then 2, 3, ... whole nodes
(``gpus_per_node`` each), up to ``DEFAULT_MAX_NODES``; a count or node number the job sets is
kept. With more than one GPU the strategy is **ddp** when weights, optimizer state, activations
and logits fit on one GPU (every GPU holds a copy, ``need(1)``), else **fsdp**: weights and
trainable state sharded FSDP/ZeRO-3 style over all N GPUs (each also holds two gathered layers),
``need(N)``; activations do not shrink, ``batch_size`` is per GPU. QLoRA is never sharded
(bitsandbytes' 4-bit weights are not FSDP2 tensors). ``layout`` says which and why.

A SIGTERM (preemption, node drain, deletion) lets the trainer finish its optimizer step and write
a checkpoint; ``checkpoint_gib`` (fp32 trainable weights + two AdamW moments, 12 B per trainable
parameter) and ``micro_batch_seconds`` (6·P FLOPs per token at ``STEP_MFU`` = 25 % of the GPU's
datasheet bf16 rate, 100 TFLOP/s when unknown; every GPU computes its own micro-batch, with ddp and
fsdp alike) size the Job's ``terminationGracePeriodSeconds``
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
Strategy = Literal["auto", "ddp", "fsdp"]


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
    gpus_needed: int = Field(description="GPUs for one training job (nodes × gpusPerPod).")
    sharded: bool = Field(description="Weights and optimizer state sharded (FSDP/ZeRO-3).")
    nodes: int = Field(default=1, description="Pods of the job (an Indexed Job with a headless Service when > 1).")
    gpus_per_pod: int = Field(default=1, description="GPUs (worker processes) per pod.")
    strategy: str = Field(default="single", description="single, ddp (a copy per GPU) or fsdp (sharded).")
    layout: str = Field(default="", description="Why this many GPUs and pods, and this strategy.")
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
    gpus_per_pod: int | None = None,
    nodes: int | None = None,
    strategy: Strategy = "auto",
) -> TrainingPlan:
    """Plan a fine-tuning job of ``shape`` on ``gpu`` (formulas in the module docstring).

    ``batch_size`` is the per-GPU micro-batch. ``gpus_per_pod`` and ``nodes`` (the job's own
    settings, if any) fix that part of the layout; the rest is chosen (module docstring), within
    ``max_gpus`` in all when given. Returns ``fits=False`` with a reason when no allowed layout fits;
    raises :class:`PlanningError` for invalid settings.
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
    if (gpus_per_pod is not None and gpus_per_pod < 1) or (nodes is not None and nodes < 1):
        raise PlanningError(f"GPUs per pod and nodes must be at least 1, got {gpus_per_pod} and {nodes}")
    if strategy not in ("auto", "ddp", "fsdp"):
        raise PlanningError(f"strategy must be auto, ddp or fsdp, got {strategy!r}")
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

    layouts = _layouts(gpus_per_pod, nodes, gpus_per_node, max_gpus)
    if not layouts:
        raise PlanningError(f"no layout of at most {max_gpus} GPUs")

    def choose(pods: int, per_pod: int) -> tuple[str, int]:
        """(strategy, bytes per GPU) of a layout."""
        total = pods * per_pod
        one = need(1)
        if total == 1:
            return "single", one
        if strategy == "ddp" or method == "qlora" or (strategy == "auto" and one <= usable):
            return "ddp", one
        return "fsdp", need(total)

    chosen = next(((p, g) for p, g in layouts if choose(p, g)[1] <= usable), None)
    # Sharding cannot help when what every GPU holds anyway is already too much.
    hopeless = fixed + gather >= usable
    pods, per_pod = chosen or (layouts[0] if hopeless else layouts[-1])
    n = pods * per_pod
    chosen_strategy, per_gpu = choose(pods, per_pod)
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
        per_gpu_gib=gib(per_gpu),
        gpu_product=gpu.product,
        gpu_memory_gib=gpu.memory_gib,
        usable_per_gpu_gib=gib(usable),
        gpus_needed=n,
        sharded=chosen_strategy == "fsdp",
        nodes=pods,
        gpus_per_pod=per_pod,
        strategy=chosen_strategy,
        checkpoint_gib=gib(trainable * CHECKPOINT_BYTES),
        micro_batch_seconds=round(
            6 * params.total * tokens / (STEP_MFU * (gpu.bf16_tflops or UNKNOWN_GPU_TFLOPS) * 1e12), 2
        ),
        fits=chosen is not None,
        summary="",
    )
    share = f"{trainable / params.total:.2%}" if method != "full" else "all"
    what = (
        f"{method} of {plan.parameters_human} {shape.name} ({human_params(trainable)} trainable, {share}), "
        f"batch {batch_size} × {max_seq_length} tokens"
    )
    where = f"{n} × {gpu.product}" + (f" in {pods} pods" if pods > 1 else "")
    where += {"fsdp": " sharded (FSDP/ZeRO-3)", "ddp": " data-parallel (DDP)"}.get(chosen_strategy, "")
    plan.layout = _why(plan, gib(need(1)), gpus_per_pod is None and nodes is None, gpus_per_node)
    if chosen is not None:
        plan.summary = f"{what}: {plan.per_gpu_gib:g} of {plan.usable_per_gpu_gib:g} GiB per GPU on {where}"
        return plan
    hints = [] if gradient_checkpointing else ["enable gradient checkpointing"]
    hints += ["lower batchSize or maxSeqLength"] + (["use qlora"] if method != "qlora" and not hopeless else [])
    if strategy == "ddp" and method != "qlora":
        hints.append("use distributed.strategy fsdp (ddp keeps the whole model on every GPU)")
    if method == "qlora" and not hopeless:
        hints.append("use method lora with fsdp (QLoRA's 4-bit weights cannot be sharded)")
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
            f"{plan.usable_per_gpu_gib:g} GiB; {', '.join(hints)} or allow more GPUs "
            "(resources.gpu.count, distributed.nodes)"
        )
    plan.summary = f"{what} does not fit on {where}"
    return plan


def _layouts(
    gpus_per_pod: int | None, nodes: int | None, gpus_per_node: int, max_gpus: int | None
) -> list[tuple[int, int]]:
    """(pods, GPUs per pod) to try, smallest first; what the job sets is kept."""
    if gpus_per_pod is not None and nodes is not None:
        layouts = [(nodes, gpus_per_pod)]
    elif gpus_per_pod is not None:
        layouts = [(k, gpus_per_pod) for k in range(1, DEFAULT_MAX_NODES + 1)]
    elif nodes is not None:
        layouts = [(nodes, g) for g in range(1, gpus_per_node + 1)]
    else:
        layouts = [(1, g) for g in range(1, gpus_per_node + 1)]
        layouts += [(k, gpus_per_node) for k in range(2, DEFAULT_MAX_NODES + 1)]
    return [(p, g) for p, g in layouts if max_gpus is None or p * g <= max_gpus]


def _why(plan: TrainingPlan, one_gpu_gib: float, proposed: bool, gpus_per_node: int) -> str:
    """One line: how many GPUs and pods, which strategy, and the numbers that decided it."""
    n, usable = plan.gpus_needed, plan.usable_per_gpu_gib
    count = f"{n} GPU{'s' if n > 1 else ''}" + (f" ({plan.nodes} pods × {plan.gpus_per_pod})" if plan.nodes > 1 else "")
    if plan.strategy == "single":
        text = f"1 GPU: {one_gpu_gib:g} of {usable:g} GiB"
    elif plan.strategy == "ddp":
        text = (
            f"{count}, ddp: the model with its optimizer state fits on one GPU ({one_gpu_gib:g} of {usable:g} GiB), "
            "so every GPU holds a copy and trains on its share of each step"
        )
    else:
        text = (
            f"{count}, fsdp: one GPU would need {one_gpu_gib:g} GiB of {usable:g}; weights and optimizer state "
            f"sharded over {n} GPUs need {plan.per_gpu_gib:g} GiB on each"
        )
    if proposed and plan.nodes > 1:
        text += f"; {plan.nodes} pods because one node has {gpus_per_node} GPUs"
    return text
