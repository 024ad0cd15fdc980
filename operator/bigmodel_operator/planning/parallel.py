"""Parallel layouts for vLLM: which tensor/pipeline sizes are valid, and what each GPU holds.

Overhead per GPU, outside weights and KV cache (constants below):

- non-torch memory (CUDA context, cuBLAS workspaces, NCCL and custom all-reduce buffers):
  ``NON_TORCH_GIB_SINGLE`` = 1.8 GiB on one GPU, ``NON_TORCH_GIB_PARALLEL`` = 3.6 GiB per GPU with
  tensor/pipeline parallelism — vLLM's profiler reports 1.79 / 3.58 GiB for Llama-3-8B at TP 1 / 2
  on H100 (vllm-project/vllm#10511);
- CUDA graphs: ``CUDA_GRAPH_GIB`` = 0.5 GiB (vLLM logs 0.3–0.6 GiB for dense models);
- activation peak of the profiling forward pass over ``max_num_batched_tokens`` tokens:
  ``tokens · (4·h + 4·i/tp) · dtype bytes`` (residual, norm, attention buffers ≈ 4·h; gate/up,
  activation and down input ≈ 4·i) plus fp32 logits ``max_num_seqs · V/tp · 4 B``. For Llama-3-8B
  at 8,192 tokens this gives 1.25 GiB; vLLM measures 1.26 GiB.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import INVALID_PARALLELISM, PlanningError
from .model_config import ModelShape
from .precision import Quantization
from .units import ceil_div

NON_TORCH_GIB_SINGLE = 1.8
NON_TORCH_GIB_PARALLEL = 3.6
CUDA_GRAPH_GIB = 0.5


@dataclass(frozen=True)
class Layout:
    """One (tensor, pipeline) layout of a replica, in bytes for its most loaded GPU."""

    tp: int
    pp: int
    weights: int  # bytes on the most loaded GPU
    overhead: int  # bytes per GPU
    kv_per_token: int  # bytes per token on the most loaded GPU
    usable: int  # bytes per GPU

    @property
    def gpus(self) -> int:
        """GPUs per replica."""
        return self.tp * self.pp

    @property
    def capacity(self) -> int:
        """Tokens the KV cache of this layout holds (0 if weights and overhead do not fit)."""
        return max(0, (self.usable - self.weights - self.overhead) // self.kv_per_token)

    def need(self, tokens: int) -> int:
        """Bytes the most loaded GPU needs for a KV cache of ``tokens`` tokens."""
        return self.weights + self.overhead + tokens * self.kv_per_token


def tp_problem(shape: ModelShape, quant: Quantization | None, tp: int) -> str | None:
    """Why vLLM would reject this tensor parallel size, or None."""
    if shape.num_attention_heads % tp:
        return f"num_attention_heads {shape.num_attention_heads} is not divisible by it"
    kv = shape.num_key_value_heads
    if not shape.uses_mla and kv % tp and tp % kv:
        return f"num_key_value_heads {kv} neither divides it nor is divisible by it"
    group = quant.group_size if quant and quant.method != "bitsandbytes" else None
    if group and group > 0:
        widths = [shape.moe_intermediate_size] if shape.is_moe else []
        if not shape.is_moe or shape.num_dense_layers:
            widths.append(shape.intermediate_size)
        for width in widths:
            if width % tp or (width // tp) % group:
                return f"MLP width {width} / {tp} is not a multiple of the quantization group {group}"
    return None


def powers_of_two(limit: int) -> list[int]:
    return [1 << n for n in range(limit.bit_length()) if 1 << n <= limit]


def candidate_layouts(
    shape: ModelShape,
    quant: Quantization | None,
    *,
    tp_fixed: int | None,
    pp_fixed: int | None,
    gpus_per_node: int,
    max_gpus: int,
) -> list[tuple[int, int]]:
    """Candidate (tp, pp) in order of GPU count: powers of two within a node, then pipeline
    stages of a full node."""
    if tp_fixed is not None:
        if problem := tp_problem(shape, quant, tp_fixed):
            raise PlanningError(f"tensorParallelSize {tp_fixed} is invalid: {problem}", reason=INVALID_PARALLELISM)
        tps = [tp_fixed]
    else:
        tps = [t for t in powers_of_two(min(gpus_per_node, max_gpus)) if not tp_problem(shape, quant, t)]
    if pp_fixed is not None and pp_fixed > shape.num_hidden_layers:
        raise PlanningError(
            f"pipelineParallelSize {pp_fixed} exceeds the model's {shape.num_hidden_layers} layers",
            reason=INVALID_PARALLELISM,
        )
    # At most max_gpus stages: the candidates (and the planning cost) do not grow with the layer count.
    pps = [pp_fixed] if pp_fixed else range(1, min(shape.num_hidden_layers, max_gpus) + 1)
    out = [(tp, pp) for pp in pps for tp in (tps if pp == 1 or pp_fixed else tps[-1:]) if tp * pp <= max_gpus]
    if not out:
        raise PlanningError(
            f"tensorParallelSize × pipelineParallelSize exceeds the {max_gpus} GPUs allowed", reason=INVALID_PARALLELISM
        )
    return out


def activation_peak(shape: ModelShape, tp: int, act_bytes: int, batched_tokens: int, max_seqs: int) -> int:
    """Bytes of vLLM's profiling forward pass per GPU (see the module docstring)."""
    width = shape.intermediate_size
    if shape.is_moe:
        routed = shape.num_experts_per_tok * shape.moe_intermediate_size
        width = max(routed + shape.shared_expert_intermediate_size, width if shape.num_dense_layers else 0)
    hidden = 4 * shape.hidden_size + 4 * width // tp
    return batched_tokens * hidden * act_bytes + max_seqs * ceil_div(shape.vocab_size, tp) * 4
