"""Training-time building blocks: linear layers, LoRA parameters, activation and logits bytes.

Activations are what autograd keeps for the backward pass, per token, for a Hugging Face
decoder (RMSNorm computed in fp32, SDPA/Flash attention, no dropout), in 16-bit training. With
h hidden size, q = a·d query width, kv = k·d key/value width, i MLP width (MoE: top-k · expert
width + shared width), per layer:

- frozen base (LoRA, QLoRA): ``8·h + 4·q + 4·kv + 6·i`` B — each RMSNorm keeps its fp32 input
  (2 × 4·h), attention keeps q, k, v and its output (2·q + 2·kv + 2·q), SwiGLU keeps gate, up and
  silu(gate) (3 × 2·i); frozen linears keep nothing, they need only their weight;
- trainable base (full): ``16·h + 4·q + 4·kv + 8·i`` B — norm weights also keep their bf16 input
  and the linears their bf16 inputs (+8·h, +2·i for down_proj's input);
- LoRA adapters are fp32 (PEFT's ``autocast_adapter_dtype``), so PEFT keeps an fp32 copy of the
  input of every adapted module: ``4 · in_features`` B each (+120·h for all-linear Llama-3.1-8B);
  QLoRA's 4-bit matmul also keeps its bf16 input (``4·h + 2·i``);
- fused attention stores no score matrix; eager attention adds Korthikanti et al.'s ``5·a·s`` B.

This is Korthikanti et al. (2022)'s 34·h count redone for SwiGLU, GQA, fp32 norms and PEFT. It was
checked on an H100 (torch 2.11, transformers 5.17, peft 0.21, per-sequence deltas of peak
memory): Llama-3.2-1B full 109.2 KB/token/layer measured vs 110.6 KB planned, LoRA all-linear
159.1 vs 157.7; Llama-3.1-8B LoRA 296.2 vs 294.9 KB.

With gradient checkpointing each layer keeps only its bf16 input (2·h) and one layer is recomputed
at a time. The loss works on ``LOGITS_BYTES`` = 14 B per logit at its peak (bf16 logits 2 + fp32
copy 4 + log-softmax 4 + its fp32 gradient 4; measured 14.0 on the H100); a fused/chunked
cross-entropy (Liger) avoids most of it, which the plan does not assume.
"""

from __future__ import annotations

from .errors import PlanningError
from .model_config import ModelShape

LOGITS_BYTES = 14
_ALIASES = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj", "fc1": "up_proj", "fc2": "down_proj"}

Linear = tuple[int, int, int, int]
"""(in_features, out_features, matrices in the model, matrices each token passes through)."""


def linear_shapes(shape: ModelShape) -> dict[str, list[Linear]]:
    """The decoder's linear layers by PEFT module name (routers excluded)."""
    h, layers, a = shape.hidden_size, shape.num_hidden_layers, shape.num_attention_heads
    out: dict[str, list[Linear]] = {}
    if shape.uses_mla:
        rank, rope = shape.kv_lora_rank or 0, shape.qk_rope_head_dim
        q_dim = a * (shape.qk_nope_head_dim + rope)
        v_dim = shape.v_head_dim or shape.head_dim
        if shape.q_lora_rank:
            out["q_a_proj"] = [(h, shape.q_lora_rank, layers, layers)]
            out["q_b_proj"] = [(shape.q_lora_rank, q_dim, layers, layers)]
        else:
            out["q_proj"] = [(h, q_dim, layers, layers)]
        out["kv_a_proj_with_mqa"] = [(h, rank + rope, layers, layers)]
        out["kv_b_proj"] = [(rank, a * (shape.qk_nope_head_dim + v_dim), layers, layers)]
        out["o_proj"] = [(a * v_dim, h, layers, layers)]
    else:
        q_dim, kv_dim = a * shape.head_dim, shape.num_key_value_heads * shape.head_dim
        out |= {
            "q_proj": [(h, q_dim, layers, layers)],
            "k_proj": [(h, kv_dim, layers, layers)],
            "v_proj": [(h, kv_dim, layers, layers)],
            "o_proj": [(q_dim, h, layers, layers)],
        }
    moe = shape.num_moe_layers
    mlps = [(shape.intermediate_size, layers - moe, layers - moe)]
    if shape.is_moe:
        mlps += [(shape.moe_intermediate_size, moe * shape.num_experts, moe * shape.num_experts_per_tok)]
        mlps += [(shape.shared_expert_intermediate_size, moe, moe)]
    for width, count, per_token in mlps:
        if width and count:
            if shape.gated_mlp:
                out.setdefault("gate_proj", []).append((h, width, count, per_token))
            out.setdefault("up_proj", []).append((h, width, count, per_token))
            out.setdefault("down_proj", []).append((width, h, count, per_token))
    return out


def lora_targets(shape: ModelShape, target_modules: list[str] | None) -> set[str]:
    """Canonical module names targeted; None or ``["all-linear"]`` means every linear layer (PEFT's
    all-linear, minus MoE routers). Mixtral's w1/w2/w3 name gate/down/up."""
    shapes = linear_shapes(shape)
    if not target_modules or target_modules == ["all-linear"]:
        return set(shapes)
    names = set()
    for name in target_modules:
        canonical = _ALIASES.get(name, name)
        if name != "all-linear" and canonical not in shapes:
            raise PlanningError(
                f"unknown LoRA target module {name!r} for {shape.name}; use all-linear or {', '.join(sorted(shapes))}"
            )
        names |= set(shapes) if name == "all-linear" else {canonical}
    return names


def lora_parameters(shape: ModelShape, rank: int, target_modules: list[str] | None = None) -> int:
    """LoRA parameters: ``rank · (in + out)`` per targeted matrix (A is r×in, B is out×r)."""
    shapes = linear_shapes(shape)
    return sum(rank * (i + o) * n for name in lora_targets(shape, target_modules) for i, o, n, _ in shapes[name])


def adapter_input_bytes_per_token(shape: ModelShape, targets: set[str]) -> int:
    """fp32 copies of the adapted modules' inputs PEFT keeps, whole model, per token."""
    shapes = linear_shapes(shape)
    return sum(4 * i * per_token for name in targets for i, _, _, per_token in shapes[name])


def layer_activation_bytes(
    shape: ModelShape, *, trainable_base: bool, quantized_base: bool = False, seq_len: int, fused_attention: bool = True
) -> int:
    """16-bit activations one layer keeps per token (formulas in the module docstring)."""
    h, a = shape.hidden_size, shape.num_attention_heads
    if shape.uses_mla:
        q = a * (shape.qk_nope_head_dim + shape.qk_rope_head_dim)
        kv = (q + a * (shape.v_head_dim or shape.head_dim)) // 2
    else:
        q, kv = a * shape.head_dim, shape.num_key_value_heads * shape.head_dim
    width = shape.intermediate_size
    if shape.is_moe:
        width = shape.num_experts_per_tok * shape.moe_intermediate_size + shape.shared_expert_intermediate_size
    mlp = (6 if shape.gated_mlp else 2) * width
    total = 8 * h + 4 * q + 4 * kv + mlp
    if trainable_base:
        total += 8 * h + 2 * width
    if quantized_base:
        total += 4 * h + 2 * width
    if not fused_attention:
        total += 5 * a * seq_len
    return total
