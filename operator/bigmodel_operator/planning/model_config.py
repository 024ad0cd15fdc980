"""Parse a Hugging Face ``config.json`` into the shape the planner needs.

Only the numbers that decide memory are kept. Multimodal wrappers (Llava, Gemma 3, Mistral 3,
Qwen-VL, ...) keep the language model under ``text_config``: its keys win over the top level, while
``architectures``, ``torch_dtype`` and ``quantization_config`` may stay at the top. The vision
encoder is counted roughly from ``vision_config`` (``layers × (4·h² + 2·h·i)``, a ViT block).
Older GPT-style key names (``n_embd``, ``n_layer``, ``n_head``, ``n_positions``) are accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError

from .errors import ModelConfigError, ModelConfigOutOfBoundsError
from .precision import Quantization, normalize_dtype, parse_quantization_config
from .units import PlanModel

# Families whose MLP is two matrices (up, down) instead of SwiGLU's three (gate, up, down).
_PLAIN_MLP = {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "gpt_bigcode", "starcoder2"}
# Families that tie lm_head to the embeddings when config.json does not say (HF class defaults).
_TIED_BY_DEFAULT = {"gpt2", "gemma", "gemma2", "gemma3", "gemma3_text", "opt", "bloom"}
# Families with q/k/v biases that config.json does not spell out.
_QKV_BIAS = {"qwen2", "qwen2_moe", "qwen2_vl", "qwen2_5_vl"}

_ALIASES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "d_model", "n_embd", "dim"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "num_key_value_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv", "n_kv_heads"),
    "intermediate_size": ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size"),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
    "max_position_embeddings": (
        "max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
        "max_seq_len",
    ),
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"),
    "num_experts_per_tok": ("num_experts_per_tok", "experts_per_token", "moe_top_k"),
}  # fmt: skip


# Upper bounds of every number read from config.json: several times the largest real model's
# (Llama-3.1-405B: h 16384, 126 layers, 128 heads; DeepSeek-V3: 256 experts, i_e 2048; Gemma-3:
# V 262144; Llama-4-Scout: 10M context). Anything beyond is refused with reason
# ModelConfigOutOfBoundsError instead of being planned: a config claiming 10^15 layers is hostile or broken.
LIMITS: dict[str, int] = {
    "hidden_size": 1 << 17,
    "num_hidden_layers": 2048,
    "num_attention_heads": 4096,
    "num_key_value_heads": 4096,
    "head_dim": 8192,
    "intermediate_size": 1 << 21,
    "vocab_size": 1 << 23,
    "max_position_embeddings": 1 << 28,
    "num_experts": 1 << 14,
    "num_experts_per_tok": 1 << 10,
    "moe_intermediate_size": 1 << 21,
    "shared_expert_intermediate_size": 1 << 23,
    "n_shared_experts": 1 << 10,
    "first_k_dense_replace": 2048,
    "kv_lora_rank": 1 << 16,
    "q_lora_rank": 1 << 16,
    "qk_rope_head_dim": 8192,
    "qk_nope_head_dim": 8192,
    "v_head_dim": 8192,
    "sliding_window": 1 << 28,
}
DEFAULT_LIMIT = 1 << 28
MAX_LIST_ITEMS = 4096  # architectures, mlp_only_layers


class ModelShape(PlanModel):
    """The memory-relevant shape of a decoder-only transformer."""

    architectures: list[str] = Field(default_factory=list, description="HF architectures.")
    model_type: str | None = Field(default=None, description="HF model_type, e.g. llama.")
    hidden_size: int = Field(gt=0, description="Model width h.")
    num_hidden_layers: int = Field(gt=0, description="Decoder layers L.")
    num_attention_heads: int = Field(gt=0, description="Query heads.")
    num_key_value_heads: int = Field(gt=0, description="Key/value heads (GQA); = heads for MHA.")
    head_dim: int = Field(gt=0, description="Per-head dimension.")
    intermediate_size: int = Field(gt=0, description="Dense MLP width i.")
    vocab_size: int = Field(gt=0, description="Vocabulary size V.")
    tie_word_embeddings: bool = Field(default=False, description="lm_head shares the embeddings.")
    max_position_embeddings: int | None = Field(default=None, description="Native context length.")
    dtype: str | None = Field(default=None, description="Checkpoint dtype (float32/16, bfloat16).")
    attention_bias: bool = Field(default=False, description="q/k/v projections have biases.")
    gated_mlp: bool = Field(default=True, description="SwiGLU-style MLP (3 matrices).")
    num_experts: int = Field(default=0, ge=0, description="Routed experts per MoE layer; 0: dense.")
    num_experts_per_tok: int = Field(default=0, ge=0, description="Experts each token uses.")
    moe_intermediate_size: int = Field(default=0, ge=0, description="Width of one routed expert.")
    shared_expert_intermediate_size: int = Field(
        default=0, ge=0, description="Total width of the always-on shared expert(s)."
    )
    num_dense_layers: int = Field(default=0, ge=0, description="MoE model layers with a dense MLP.")
    kv_lora_rank: int | None = Field(default=None, description="MLA latent KV rank (DeepSeek).")
    q_lora_rank: int | None = Field(default=None, description="MLA query low-rank size.")
    qk_rope_head_dim: int = Field(default=0, ge=0, description="MLA rotary part of a head.")
    qk_nope_head_dim: int = Field(default=0, ge=0, description="MLA non-rotary part of a head.")
    v_head_dim: int = Field(default=0, ge=0, description="MLA value head dimension.")
    sliding_window: int | None = Field(default=None, description="Sliding attention window.")
    quantization: Quantization | None = Field(default=None, description="Checkpoint quantization.")
    vision_parameters: int = Field(default=0, ge=0, description="Approximate vision encoder size.")

    @property
    def is_moe(self) -> bool:
        """Mixture-of-experts MLP in (some) layers."""
        return self.num_experts > 1

    @property
    def uses_mla(self) -> bool:
        """DeepSeek multi-head latent attention (a compressed, shared KV cache)."""
        return self.kv_lora_rank is not None

    @property
    def num_moe_layers(self) -> int:
        """Layers whose MLP is a mixture of experts."""
        return self.num_hidden_layers - self.num_dense_layers if self.is_moe else 0

    @property
    def name(self) -> str:
        """The first architecture, or the model_type."""
        return self.architectures[0] if self.architectures else (self.model_type or "model")


def _get(cfg: Mapping[str, Any], field: str) -> Any:
    for key in _ALIASES.get(field, (field,)):
        if cfg.get(key) is not None:
            return cfg[key]
    return None


def _config_int(cfg: Mapping[str, Any], field: str, *, required: bool = False) -> int | None:
    value = _get(cfg, field)
    if value is None:
        if required:
            raise ModelConfigError(
                f"config.json has no {field!r} (also tried {', '.join(_ALIASES.get(field, ()))})",
                key=field,
            )
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < (1 if required else 0):
        kind = "a positive" if required else "a non-negative"
        raise ModelConfigError(f"config.json {field!r} must be {kind} integer, got {_short(value)}", key=field)
    limit = LIMITS.get(field, DEFAULT_LIMIT)
    if value > limit:
        raise ModelConfigOutOfBoundsError(
            f"config.json {field!r} is {_short(value)}, beyond any real model (at most {limit:,}); "
            "fix the config (spec.model.config or its ConfigMap)",
            key=field,
        )
    return value


def _short(value: Any) -> str:
    """A value for a message, cut short (a hostile config may hold a huge number or string)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit integer"
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _vision_parameters(cfg: Any) -> int:
    if not isinstance(cfg, Mapping):
        return 0
    h = cfg.get("hidden_size") or cfg.get("embed_dim")
    layers = cfg.get("num_hidden_layers") or cfg.get("depth")
    inner = cfg.get("intermediate_size")
    if not all(isinstance(v, int) and v > 0 for v in (h, layers)):
        return 0
    for key, value, limit in (
        ("hidden_size", h, LIMITS["hidden_size"]),
        ("num_hidden_layers", layers, LIMITS["num_hidden_layers"]),
        ("intermediate_size", inner, LIMITS["intermediate_size"]),
    ):
        if isinstance(value, int) and value > limit:
            raise ModelConfigOutOfBoundsError(
                f"config.json vision_config {key!r} is {_short(value)}, beyond any real model (at most {limit:,})",
                key=f"vision_config.{key}",
            )
    assert isinstance(h, int)
    assert isinstance(layers, int)
    inner = inner if isinstance(inner, int) and inner > 0 else 4 * h
    return layers * (4 * h * h + 2 * h * inner)


def parse_model_config(config: Mapping[str, Any]) -> ModelShape:
    """Build a :class:`ModelShape` from a config.json dict; raises :class:`ModelConfigError` naming
    the key that is missing or malformed."""
    if not isinstance(config, Mapping):
        raise ModelConfigError("config.json must be a JSON object")
    text = config.get("text_config") or config.get("llm_config")
    cfg: dict[str, Any] = {k: v for k, v in config.items() if v is not None}
    if isinstance(text, Mapping):
        cfg.update({k: v for k, v in text.items() if v is not None})
    model_type = str(cfg.get("model_type") or "") or None
    hidden = _config_int(cfg, "hidden_size", required=True)
    layers = _config_int(cfg, "num_hidden_layers", required=True)
    heads = _config_int(cfg, "num_attention_heads", required=True)
    vocab = _config_int(cfg, "vocab_size", required=True)
    # required=True never returns None
    assert hidden is not None
    assert layers is not None
    assert heads is not None
    assert vocab is not None
    gated = model_type not in _PLAIN_MLP
    inner = _config_int(cfg, "intermediate_size")
    if not inner:
        if gated and not cfg.get("moe_intermediate_size"):
            raise ModelConfigError("config.json has no 'intermediate_size'", key="intermediate_size")
        inner = 4 * hidden  # GPT-2 style default (n_inner: null)
    head_dim = _config_int(cfg, "head_dim")
    if not head_dim:
        if hidden % heads:
            raise ModelConfigError(
                f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}; config.json needs 'head_dim'",
                key="head_dim",
            )
        head_dim = hidden // heads
    raw_dtype = cfg.get("torch_dtype") or cfg.get("dtype")
    try:
        dtype = normalize_dtype(str(raw_dtype)) if raw_dtype else None
    except ValueError as exc:
        raise ModelConfigError(f"config.json torch_dtype: {exc}", key="torch_dtype") from exc
    quant_cfg = cfg.get("quantization_config")
    if quant_cfg is not None and not isinstance(quant_cfg, Mapping):
        raise ModelConfigError("quantization_config must be an object", key="quantization_config")

    experts = _config_int(cfg, "num_experts") or 0
    moe_inner = _config_int(cfg, "moe_intermediate_size") or (inner if experts > 1 else 0)
    shared = _config_int(cfg, "shared_expert_intermediate_size") or 0
    if not shared and (n_shared := _config_int(cfg, "n_shared_experts")):
        shared = n_shared * moe_inner  # DeepSeek: n_shared_experts × expert width
    dense_layers = _config_int(cfg, "first_k_dense_replace") or 0
    mlp_only = cfg.get("mlp_only_layers")
    for key in ("architectures", "mlp_only_layers"):
        if isinstance(cfg.get(key), list) and len(cfg[key]) > MAX_LIST_ITEMS:
            raise ModelConfigOutOfBoundsError(f"config.json {key!r} has more than {MAX_LIST_ITEMS} items", key=key)
    if isinstance(mlp_only, list):
        dense_layers = max(dense_layers, len(mlp_only))
    window = _config_int(cfg, "sliding_window")
    if cfg.get("use_sliding_window") is False:
        window = None
    bias = cfg.get("attention_bias", cfg.get("qkv_bias"))
    tied = cfg.get("tie_word_embeddings")

    try:
        return ModelShape(
            architectures=[str(a)[:256] for a in cfg.get("architectures") or []],
            model_type=model_type,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=_config_int(cfg, "num_key_value_heads") or heads,
            head_dim=head_dim,
            intermediate_size=inner,
            vocab_size=vocab,
            tie_word_embeddings=bool(tied) if tied is not None else model_type in _TIED_BY_DEFAULT,
            max_position_embeddings=_config_int(cfg, "max_position_embeddings"),
            dtype=dtype,
            attention_bias=bool(bias) if bias is not None else model_type in _QKV_BIAS,
            gated_mlp=gated,
            num_experts=experts if experts > 1 else 0,
            num_experts_per_tok=(_config_int(cfg, "num_experts_per_tok") or 1) if experts > 1 else 0,
            moe_intermediate_size=moe_inner if experts > 1 else 0,
            shared_expert_intermediate_size=shared if experts > 1 else 0,
            num_dense_layers=min(dense_layers, layers) if experts > 1 else 0,
            kv_lora_rank=_config_int(cfg, "kv_lora_rank"),
            q_lora_rank=_config_int(cfg, "q_lora_rank"),
            qk_rope_head_dim=_config_int(cfg, "qk_rope_head_dim") or 0,
            qk_nope_head_dim=_config_int(cfg, "qk_nope_head_dim") or 0,
            v_head_dim=_config_int(cfg, "v_head_dim") or 0,
            sliding_window=window or None,
            quantization=parse_quantization_config(quant_cfg) if quant_cfg else None,
            vision_parameters=_vision_parameters(config.get("vision_config")),
        )
    except ValidationError as exc:  # e.g. a negative size that the checks above let through
        error = exc.errors()[0]
        names = {info.alias: name for name, info in ModelShape.model_fields.items()}
        key = names.get(str(error["loc"][0]), str(error["loc"][0])) if error["loc"] else "config.json"
        raise ModelConfigError(f"config.json {key!r}: {error['msg']}", key=key) from exc
