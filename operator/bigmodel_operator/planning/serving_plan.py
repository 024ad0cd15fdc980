"""The serving plan: how a model fits on GPUs under vLLM, before any GPU is requested.

vLLM gives each GPU a budget of ``total × gpu_memory_utilization``; weights, the activation peak of
its profiling run and non-torch allocations come out of it, the rest becomes the KV cache. It
refuses to start if the KV cache cannot hold one ``max_model_len`` sequence. We reproduce that
arithmetic per GPU (the most loaded one) for each layout ``(tensor, pipeline)`` in order of GPU
count and pick the first that holds ``max_model_len × concurrency`` tokens. See docs/planning.md.

Overheads (activation peak, CUDA graphs, non-torch memory) are in ``parallel``.
"""

from __future__ import annotations

from pydantic import Field

from .errors import MAX_MODEL_LEN_TOO_LONG, PlanningError
from .estimate import count_parameters, kv_bytes_per_token, kv_bytes_per_token_per_layer, weight_bytes
from .gpus import GpuProduct
from .model_config import ModelShape
from .parallel import (
    CUDA_GRAPH_GIB,
    NON_TORCH_GIB_PARALLEL,
    NON_TORCH_GIB_SINGLE,
    Layout,
    activation_peak,
    candidate_layouts,
)
from .precision import DTYPE_BYTES, normalize_dtype, resolve_quantization
from .units import GIB, PlanModel, ceil_div, floor_to, gib, human_params

DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
DEFAULT_MAX_NUM_SEQS = 256
PREFERRED_MODEL_LEN = 32768
"""Without a user maxModelLen, the smallest layout whose KV cache holds this many tokens (or the
model's native context, if shorter) wins: long enough for real chats and documents."""
MIN_MODEL_LEN = 2048
"""When no allowed layout reaches the preferred length, accept a shorter one down to this."""
UNKNOWN_CONTEXT_LEN = 2048
"""vLLM's own max_model_len when config.json names no context length."""
DEFAULT_MAX_NODES = 8


class ServingPlan(PlanModel):
    """GPU memory plan for one replica of a model served by vLLM."""

    parameters: int = Field(description="Total parameters.")
    parameters_human: str = Field(description='Parameters in decimal units, e.g. "8.03B".')
    active_parameters: int | None = Field(
        default=None, description="Parameters used per token (mixture-of-experts models only)."
    )
    weight_format: str = Field(description='Weight storage, e.g. "bfloat16" or "awq 4-bit g128".')
    weight_bytes: int = Field(description="Bytes of all weights.")
    weight_gib: float = Field(description="Weights in GiB.")
    kv_cache_bytes_per_token: int = Field(description="KV-cache bytes per token, whole model.")
    kv_cache_gib: float = Field(description="KV cache for maxModelLen × concurrency tokens, GiB.")
    overhead_gib: float = Field(description="Activations, CUDA graphs, non-torch memory, all GPUs.")
    total_gib_per_replica: float = Field(description="Weights + KV cache + overhead, GiB.")
    per_gpu_gib: float = Field(description="What the most loaded GPU needs, GiB.")
    gpu_product: str = Field(description="GPU product planned for.")
    gpu_memory_gib: float = Field(description="Memory of one GPU, GiB.")
    usable_per_gpu_gib: float = Field(description="GPU memory × gpuMemoryUtilization, GiB.")
    tensor_parallel_size: int = Field(description="GPUs one layer is split across.")
    pipeline_parallel_size: int = Field(description="Pipeline stages (nodes when > 1).")
    gpus_per_replica: int = Field(description="tensorParallelSize × pipelineParallelSize.")
    max_model_len: int = Field(description="Context length the engine is started with.")
    concurrency: int = Field(description="Full-length sequences the KV cache must hold at once.")
    max_num_seqs: int = Field(
        default=DEFAULT_MAX_NUM_SEQS,
        description=(
            "Sequences the engine batches at once (vLLM's max_num_seqs, also the replica's admission limit); "
            "the activation peak is planned for it. Shorter sequences share the KV cache, so it can exceed "
            "kvCacheCapacityTokens / maxModelLen."
        ),
    )
    kv_cache_capacity_tokens: int = Field(description="Tokens the KV cache can hold in this layout.")
    fits: bool = Field(description="Whether the model fits within the allowed GPUs.")
    reason: str = Field(default="", description="Why it does not fit; empty when it fits.")
    summary: str = Field(description="One line for humans.")


def _activation_dtype(shape: ModelShape, dtype: str, gpu: GpuProduct) -> str:
    try:
        chosen = (shape.dtype or "bfloat16") if dtype == "auto" else normalize_dtype(dtype)
    except ValueError as exc:
        raise PlanningError(str(exc)) from exc
    if chosen == "float8":
        raise PlanningError("dtype cannot be fp8; use quantization: fp8")
    if dtype == "auto" and chosen == "float32":
        chosen = "bfloat16"  # vLLM serves fp32 checkpoints in 16 bits
    if chosen == "bfloat16" and not gpu.supports_bf16:
        chosen = "float16"
    return chosen


def _round_len(tokens: int) -> int:
    return floor_to(tokens, 1024) if tokens >= 1024 else floor_to(tokens, 16)


def plan_serving(
    shape: ModelShape,
    gpu: GpuProduct,
    *,
    dtype: str = "auto",
    quantization: str | None = None,
    kv_cache_dtype: str = "auto",
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    tensor_parallel_size: int | None = None,
    pipeline_parallel_size: int | None = None,
    concurrency: int = 1,
    gpus_per_node: int = 8,
    max_gpus: int | None = None,
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
) -> ServingPlan:
    """Plan one vLLM replica of ``shape`` on ``gpu``.

    ``tensor_parallel_size``/``pipeline_parallel_size`` of None are chosen: the smallest layout
    (powers of two within a node of ``gpus_per_node``, then pipeline stages of full nodes, at most
    ``max_gpus`` — the BigModel's ``resources.gpu.count`` — or 8 nodes) that fits. ``max_model_len``
    None chooses the longest context that fits, up to the model's native one, preferring a layout
    that reaches 32,768 tokens (or the native length if shorter). ``concurrency`` full-length
    sequences must fit in the KV cache at once.

    Returns ``fits=False`` with a ``reason`` when no allowed layout fits; raises
    :class:`PlanningError` for settings vLLM would reject (a tensor parallel size that does not
    divide the heads, a pre-quantized format on an unquantized checkpoint, a ``max_model_len``
    beyond the model's context, ...).
    """
    if not 0 < gpu_memory_utilization <= 1:
        raise PlanningError(f"gpuMemoryUtilization must be in (0, 1], got {gpu_memory_utilization}")
    for name, value in (("concurrency", concurrency), ("gpusPerNode", gpus_per_node)):
        if value < 1:
            raise PlanningError(f"{name} must be at least 1, got {value}")
    if max_gpus is not None and max_gpus < 1:
        raise PlanningError(f"the GPU count must be at least 1, got {max_gpus}")
    native = shape.max_position_embeddings or UNKNOWN_CONTEXT_LEN
    if max_model_len is not None and not 0 < max_model_len <= native:
        raise PlanningError(
            f"maxModelLen {max_model_len} is beyond the model's context length {native} "
            "(max_position_embeddings): lower spec.engine.maxModelLen",
            reason=MAX_MODEL_LEN_TOO_LONG,
        )

    act_dtype = _activation_dtype(shape, dtype, gpu)
    act_bytes = DTYPE_BYTES[act_dtype]
    quant = resolve_quantization(quantization, shape.quantization)
    try:
        kv_bytes = act_bytes if kv_cache_dtype == "auto" else DTYPE_BYTES[normalize_dtype(kv_cache_dtype)]
    except ValueError as exc:
        raise PlanningError(f"kvCacheDtype: {exc}") from exc
    params = count_parameters(shape)
    weights = weight_bytes(params, act_bytes, quant)
    embed = params.embedding * act_bytes
    edge = embed + params.lm_head * act_bytes + params.vision * act_bytes
    layer_weights = weights - edge
    usable = int(gpu.memory_gib * gpu_memory_utilization * GIB)
    allowed = max_gpus if max_gpus is not None else gpus_per_node * DEFAULT_MAX_NODES
    layers = shape.num_hidden_layers

    def build(tp: int, pp: int) -> Layout:
        stage_layers = ceil_div(layers, pp)
        stage_edge = edge if pp == 1 else embed + params.vision * act_bytes
        overhead = (NON_TORCH_GIB_PARALLEL if tp * pp > 1 else NON_TORCH_GIB_SINGLE) + CUDA_GRAPH_GIB
        return Layout(
            tp=tp,
            pp=pp,
            weights=ceil_div(layer_weights * stage_layers // layers + stage_edge, tp),
            overhead=int(overhead * GIB) + activation_peak(shape, tp, act_bytes, max_num_batched_tokens, max_num_seqs),
            kv_per_token=stage_layers * kv_bytes_per_token_per_layer(shape, kv_bytes, tp),
            usable=usable,
        )

    layouts = [
        build(tp, pp)
        for tp, pp in candidate_layouts(
            shape,
            quant,
            tp_fixed=tensor_parallel_size,
            pp_fixed=pipeline_parallel_size,
            gpus_per_node=gpus_per_node,
            max_gpus=allowed,
        )
    ]
    chosen: Layout | None
    if max_model_len is not None:
        length = max_model_len
        chosen = next((lay for lay in layouts if lay.capacity >= length * concurrency), None)
    else:
        length = min(native, PREFERRED_MODEL_LEN)
        chosen = next((lay for lay in layouts if lay.capacity >= length * concurrency), None)
        if chosen is None:
            roomiest = max(layouts, key=lambda lay: lay.capacity)
            if roomiest.capacity // concurrency >= min(native, MIN_MODEL_LEN):
                chosen = roomiest
            length = min(native, MIN_MODEL_LEN)
        if chosen is not None:
            length = min(native, _round_len(chosen.capacity // concurrency))
    layout = chosen or layouts[-1]

    tokens = length * concurrency
    kv_total = tokens * layers * kv_bytes_per_token_per_layer(shape, kv_bytes, layout.tp) * layout.tp
    overhead_total = layout.overhead * layout.gpus
    weight_format = quant.label if quant else act_dtype
    where = f"{layout.gpus} × {gpu.product} ({gpu.memory_gib:g} GiB, {gpu_memory_utilization:.0%} usable)"
    plan = ServingPlan(
        parameters=params.total,
        parameters_human=human_params(params.total),
        active_parameters=params.active if shape.is_moe else None,
        weight_format=weight_format,
        weight_bytes=weights,
        weight_gib=gib(weights),
        kv_cache_bytes_per_token=kv_bytes_per_token(shape, kv_bytes),
        kv_cache_gib=gib(kv_total),
        overhead_gib=gib(overhead_total),
        total_gib_per_replica=gib(weights + kv_total + overhead_total),
        per_gpu_gib=gib(layout.need(tokens)),
        gpu_product=gpu.product,
        gpu_memory_gib=gpu.memory_gib,
        usable_per_gpu_gib=gib(usable),
        tensor_parallel_size=layout.tp,
        pipeline_parallel_size=layout.pp,
        gpus_per_replica=layout.gpus,
        max_model_len=length,
        concurrency=concurrency,
        max_num_seqs=max_num_seqs,
        kv_cache_capacity_tokens=layout.capacity,
        fits=chosen is not None,
        summary="",
    )
    head = f"{plan.parameters_human} {shape.name} ({weight_format})"
    if chosen is not None:
        plan.summary = (
            f"{head} on {where}, TP {layout.tp} PP {layout.pp}: {plan.per_gpu_gib:g} of "
            f"{plan.usable_per_gpu_gib:g} GiB per GPU; maxModelLen {length}, KV cache holds "
            f"{layout.capacity:,} tokens"
        )
        return plan
    plan.reason = (
        f"needs {plan.total_gib_per_replica:g} GiB per replica (weights {plan.weight_gib:g} + "
        f"KV cache {plan.kv_cache_gib:g} for maxModelLen {length} × {concurrency} + overhead "
        f"{plan.overhead_gib:g}), {plan.per_gpu_gib:g} GiB on each GPU at TP {layout.tp} PP "
        f"{layout.pp}, but {where} give {plan.usable_per_gpu_gib:g} GiB each; use a quantized "
        f"model (fp8, AWQ/GPTQ), a smaller maxModelLen, a larger GPU or allow more GPUs"
    )
    plan.summary = f"{head} does not fit on {where}"
    return plan
