"""config.json → ModelShape: real public configs, multimodal nesting, quantization, errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bigmodel_operator.planning import ModelConfigError, ModelShape, parse_model_config

Shape = Callable[[str], ModelShape]
Config = Callable[[str], dict[str, Any]]

LLAMA_8B = "meta-llama--Llama-3.1-8B"
LLAMA_1B = "meta-llama--Llama-3.2-1B"
LLAMA_8B_AWQ = "hugging-quants--Meta-Llama-3.1-8B-Instruct-AWQ-INT4"
QWEN_7B = "Qwen--Qwen2.5-7B"
QWEN_MOE = "Qwen--Qwen3-30B-A3B"
MIXTRAL = "mistralai--Mixtral-8x7B-v0.1"
DEEPSEEK_LITE = "deepseek-ai--DeepSeek-V2-Lite"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (LLAMA_8B, {"hidden_size": 4096, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False}),
        (LLAMA_1B, {"hidden_size": 2048, "head_dim": 64, "tie_word_embeddings": True, "dtype": "bfloat16"}),
        (QWEN_7B, {"num_key_value_heads": 4, "head_dim": 128, "attention_bias": True, "sliding_window": None}),
        (MIXTRAL, {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 14336}),
        (QWEN_MOE, {"num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768, "head_dim": 128}),
        (
            DEEPSEEK_LITE,
            {
                "num_experts": 64,
                "shared_expert_intermediate_size": 2 * 1408,
                "num_dense_layers": 1,
                "kv_lora_rank": 512,
            },
        ),
        (LLAMA_8B_AWQ, {"dtype": "float16", "max_position_embeddings": 131072}),
    ],
)
def test_public_configs_parse(shape: Shape, name: str, expected: dict[str, Any]) -> None:
    parsed = shape(name)
    assert {key: getattr(parsed, key) for key in expected} == expected


def test_awq_quantization_config_is_read(shape: Shape) -> None:
    quant = shape(LLAMA_8B_AWQ).quantization
    assert quant is not None
    assert (quant.method, quant.bits, quant.group_size, quant.label) == ("awq", 4, 128, "awq 4-bit g128")
    # fp16 scale + 4-bit zero point per 128 weights
    assert quant.bytes_per_weight == pytest.approx(0.5 + 2.5 / 128, abs=1e-6)


@pytest.mark.parametrize(
    ("quantization_config", "method", "bits", "bytes_per_weight"),
    [
        ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}, "gptq", 4, 0.5 + 2.5 / 128),
        ({"quant_method": "gptq", "bits": 8, "group_size": -1}, "gptq", 8, 1.0),
        ({"quant_method": "awq", "w_bit": 4, "q_group_size": 64}, "awq", 4, 0.5 + 2.5 / 64),
        ({"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}, "fp8", 8, 1.0),
        (
            {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_use_double_quant": True},
            "bitsandbytes",
            4,
            0.5 + 1 / 64 + 4 / (64 * 256),
        ),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes", 4, 0.5 + 4 / 64),
        ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "bitsandbytes", 8, 1.0),
        ({"quant_method": "mxfp4"}, "mxfp4", 4, 0.5 + 1 / 32),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {
                    "group_0": {"weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}}
                },
            },
            "compressed-tensors",
            4,
            0.5 + 2 / 128,
        ),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}},
            },
            "compressed-tensors",
            8,
            1.0,
        ),
    ],
)
def test_quantization_formats(
    config: Config, quantization_config: dict[str, Any], method: str, bits: int, bytes_per_weight: float
) -> None:
    quant = parse_model_config({**config(LLAMA_8B), "quantization_config": quantization_config}).quantization
    assert quant is not None
    assert (quant.method, quant.bits) == (method, bits)
    assert quant.bytes_per_weight == pytest.approx(bytes_per_weight, abs=1e-6)


def test_unsupported_quantization_names_the_key(config: Config) -> None:
    with pytest.raises(ModelConfigError, match="hqq") as err:
        parse_model_config({**config(LLAMA_8B), "quantization_config": {"quant_method": "hqq"}})
    assert err.value.key == "quantization_config.quant_method"


@pytest.mark.parametrize(
    "quantization_config",
    [
        {"quant_method": "gptq", "bits": 32},
        {"quant_method": "compressed-tensors", "config_groups": "group_0"},
    ],
)
def test_malformed_quantization_config_is_a_config_error(config: Config, quantization_config: dict[str, Any]) -> None:
    with pytest.raises(ModelConfigError) as err:
        parse_model_config({**config(LLAMA_8B), "quantization_config": quantization_config})
    assert err.value.key is not None
    assert err.value.key.startswith("quantization_config")


def test_multimodal_wrapper_uses_text_config(config: Config) -> None:
    text = {k: v for k, v in config(LLAMA_8B).items() if k not in ("architectures", "torch_dtype")}
    wrapper = {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "torch_dtype": "bfloat16",
        "text_config": text,
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24},
    }
    parsed = parse_model_config(wrapper)
    assert parsed.architectures == ["LlavaForConditionalGeneration"]
    assert (parsed.hidden_size, parsed.num_hidden_layers, parsed.dtype) == (4096, 32, "bfloat16")
    assert parsed.vision_parameters == 24 * (4 * 1024**2 + 2 * 1024 * 4096)  # ViT blocks ≈ 302M


def test_newer_dtype_key_and_default_kv_heads(config: Config) -> None:
    cfg = {k: v for k, v in config(LLAMA_8B).items() if k not in ("torch_dtype", "num_key_value_heads")}
    parsed = parse_model_config({**cfg, "dtype": "float16"})
    assert (parsed.dtype, parsed.num_key_value_heads) == ("float16", 32)


def test_gpt2_style_keys() -> None:
    gpt2 = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_embd": 768,
        "n_head": 12,
        "n_layer": 12,
        "n_positions": 1024,
        "n_inner": None,
        "vocab_size": 50257,
    }
    parsed = parse_model_config(gpt2)
    assert (parsed.hidden_size, parsed.intermediate_size, parsed.max_position_embeddings) == (768, 3072, 1024)
    assert not parsed.gated_mlp
    assert parsed.tie_word_embeddings  # GPT-2's class default


def test_sliding_window_is_kept_only_when_used(config: Config) -> None:
    cfg = config(QWEN_7B)
    assert parse_model_config(cfg).sliding_window is None  # use_sliding_window: false
    assert parse_model_config({**cfg, "use_sliding_window": True}).sliding_window == 131072


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"])
def test_missing_essential_key_is_named(config: Config, key: str) -> None:
    cfg = {k: v for k, v in config(LLAMA_8B).items() if k != key}
    with pytest.raises(ModelConfigError, match=key) as err:
        parse_model_config(cfg)
    assert err.value.key == key


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"hidden_size": "4096"}, "hidden_size"),
        ({"num_attention_heads": 0}, "num_attention_heads"),
        ({"head_dim": -1}, "head_dim"),
        ({"num_attention_heads": 4.5}, "num_attention_heads"),
        ({"num_key_value_heads": True}, "num_key_value_heads"),
        ({"torch_dtype": "int3"}, "torch_dtype"),
        ({"intermediate_size": None}, "intermediate_size"),
        ({"hidden_size": 4100}, "head_dim"),
        ({"quantization_config": "awq"}, "quantization_config"),
    ],
)
def test_malformed_values_are_named(config: Config, patch: dict[str, Any], key: str) -> None:
    with pytest.raises(ModelConfigError) as err:
        parse_model_config({**config(LLAMA_8B), **patch})
    assert err.value.key == key
    assert key in str(err.value)


def test_not_an_object() -> None:
    with pytest.raises(ModelConfigError, match="JSON object"):
        parse_model_config([])  # type: ignore[arg-type]
