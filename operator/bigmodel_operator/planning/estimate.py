"""Parameter counts, weight bytes and KV-cache bytes of a decoder-only transformer.

Notation: h hidden size, L layers, a query heads, k KV heads, d head dim, i MLP width, V vocabulary,
E routed experts (top-k of them per token), i_e expert width.

Parameters:
- embeddings ``V·h``; lm_head ``V·h`` unless tied; final norm ``h``;
- attention per layer ``h·a·d`` (q) + ``2·h·k·d`` (k, v: grouped-query attention shares k heads) +
  ``a·d·h`` (o), plus ``a·d + 2·k·d`` biases when the family has q/k/v biases (Qwen2);
  DeepSeek MLA: ``h·a·(d_nope+d_rope)`` (or via ``q_lora_rank``) + ``h·(r_kv+d_rope)`` +
  ``r_kv·a·(d_nope+d_v)`` + ``a·d_v·h``;
- MLP per layer ``3·h·i`` (SwiGLU: gate, up, down) or ``2·h·i`` (GPT-2 style);
- MoE layer: ``E·3·h·i_e`` experts + ``h·E`` router + ``3·h·i_shared`` shared experts;
- two RMSNorm/LayerNorm weight vectors ``2·h`` per layer.

KV cache per token: ``2 (K and V) · L · k · d · bytes`` — Llama-3.1-8B in bf16:
2·32·8·128·2 B = 131,072 B = 128 KiB. MLA caches one latent per layer:
``L · (r_kv + d_rope) · bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model_config import ModelShape
from .precision import Quantization


@dataclass(frozen=True)
class ParamCount:
    """Parameters by group (whole model)."""

    embedding: int
    lm_head: int
    attention: int  # linear weights of all attention blocks (quantizable)
    mlp: int  # dense MLP weights (quantizable)
    experts: int  # routed expert weights (quantizable)
    shared_experts: int  # always-active expert weights (quantizable)
    other: int  # norms, biases, routers, MLA norms (kept in the activation dtype)
    vision: int  # vision encoder (approximate)
    active_experts: int  # routed expert weights one token touches

    @property
    def total(self) -> int:
        """All parameters."""
        return (
            self.embedding + self.lm_head + self.attention + self.mlp + self.experts
            + self.shared_experts + self.other + self.vision
        )  # fmt: skip

    @property
    def active(self) -> int:
        """Parameters used per token (MoE: only top-k experts)."""
        return self.total - self.experts + self.active_experts

    @property
    def linear(self) -> int:
        """Weights of the decoder blocks' linear layers: what quantization applies to."""
        return self.attention + self.mlp + self.experts + self.shared_experts


def attention_params_per_layer(shape: ModelShape) -> tuple[int, int]:
    """(linear weights, norm/bias vectors) of one attention block."""
    h, a = shape.hidden_size, shape.num_attention_heads
    if shape.uses_mla:
        rank = shape.kv_lora_rank or 0
        rope, nope = shape.qk_rope_head_dim, shape.qk_nope_head_dim
        v_dim = shape.v_head_dim or shape.head_dim
        q_dim = a * (nope + rope)
        q = h * shape.q_lora_rank + shape.q_lora_rank * q_dim if shape.q_lora_rank else h * q_dim
        kv = h * (rank + rope) + rank * a * (nope + v_dim)
        norms = rank + (shape.q_lora_rank or 0)
        return q + kv + a * v_dim * h, norms
    q_dim, kv_dim = a * shape.head_dim, shape.num_key_value_heads * shape.head_dim
    linear = 2 * h * q_dim + 2 * h * kv_dim
    bias = q_dim + 2 * kv_dim if shape.attention_bias else 0
    return linear, bias


def count_parameters(shape: ModelShape) -> ParamCount:
    """Count parameters by group from the config alone (no weights needed)."""
    h, layers, vocab = shape.hidden_size, shape.num_hidden_layers, shape.vocab_size
    attn, attn_other = attention_params_per_layer(shape)
    mlp_mats = 3 if shape.gated_mlp else 2
    moe_layers = shape.num_moe_layers
    dense_layers = layers - moe_layers
    expert = 3 * h * shape.moe_intermediate_size
    embedding = vocab * h
    return ParamCount(
        embedding=embedding,
        lm_head=0 if shape.tie_word_embeddings else embedding,
        attention=layers * attn,
        mlp=dense_layers * mlp_mats * h * shape.intermediate_size,
        experts=moe_layers * shape.num_experts * expert,
        shared_experts=moe_layers * 3 * h * shape.shared_expert_intermediate_size,
        other=layers * (attn_other + 2 * h) + h + moe_layers * h * shape.num_experts,
        vision=shape.vision_parameters,
        active_experts=moe_layers * shape.num_experts_per_tok * expert,
    )


def weight_bytes(params: ParamCount, dtype_bytes: int, quant: Quantization | None) -> int:
    """Bytes of all weights: quantized linear layers at ``quant.bytes_per_weight``, everything else
    (embeddings, lm_head, norms, biases, routers, vision) at ``dtype_bytes``."""
    if quant is None:
        return params.total * dtype_bytes
    quantized = params.experts if quant.experts_only else params.linear
    return round(quantized * quant.bytes_per_weight) + (params.total - quantized) * dtype_bytes


def kv_bytes_per_token_per_layer(shape: ModelShape, kv_bytes: int, tensor_parallel: int = 1) -> int:
    """KV-cache bytes one token takes in one layer on one GPU of a tensor-parallel group.

    vLLM splits KV heads across ranks and replicates them when ``tp > k`` (each rank keeps one);
    MLA's latent is not split, every rank keeps all of it.
    """
    if shape.uses_mla:
        return ((shape.kv_lora_rank or 0) + shape.qk_rope_head_dim) * kv_bytes
    heads = max(1, shape.num_key_value_heads // tensor_parallel)
    return 2 * heads * shape.head_dim * kv_bytes


def kv_bytes_per_token(shape: ModelShape, kv_bytes: int) -> int:
    """KV-cache bytes per token for the whole model on one GPU (no parallelism)."""
    return shape.num_hidden_layers * kv_bytes_per_token_per_layer(shape, kv_bytes)
