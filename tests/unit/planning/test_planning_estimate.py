"""Parameter counts, weight bytes and KV-cache bytes against hand computations and model cards."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bigmodel_operator.planning import ModelShape, count_parameters, human_params, kv_bytes_per_token, weight_bytes

Shape = Callable[[str], ModelShape]


def llama_params(
    h: int, layers: int, heads: int, kv: int, inner: int, vocab: int, *, head_dim: int = 0, tied: bool = False
) -> int:
    """Written out by hand: q + k + v + o, SwiGLU, two norms per layer; embeddings, lm_head, final norm."""
    d = head_dim or h // heads
    attention = h * heads * d + 2 * h * kv * d + heads * d * h
    layer = attention + 3 * h * inner + 2 * h
    return layers * layer + vocab * h * (1 if tied else 2) + h


# (config, exact hand count, published count, published source)
CASES = [
    ("meta-llama--Llama-3.1-8B", llama_params(4096, 32, 32, 8, 14336, 128256), 8.03e9),
    ("meta-llama--Llama-3.1-70B", llama_params(8192, 80, 64, 8, 28672, 128256), 70.6e9),
    ("meta-llama--Llama-3.1-405B", llama_params(16384, 126, 128, 8, 53248, 128256), 405.9e9),
    ("meta-llama--Llama-3.2-1B", llama_params(2048, 16, 32, 8, 8192, 128256, head_dim=64, tied=True), 1.24e9),
    # Qwen2 has q/k/v biases: + (3584 + 2·512) per layer; not tied (vocab 152064 × 3584 twice).
    ("Qwen--Qwen2.5-7B", llama_params(3584, 28, 28, 4, 18944, 152064) + 28 * (3584 + 2 * 512), 7.62e9),
    # Mixtral: 8 SwiGLU experts of width 14336 and a 4096×8 router per layer, instead of one MLP.
    (
        "mistralai--Mixtral-8x7B-v0.1",
        llama_params(4096, 32, 32, 8, 14336, 32000) + 32 * (7 * 3 * 4096 * 14336 + 4096 * 8),
        46.7e9,
    ),
]


@pytest.mark.parametrize(("name", "hand", "published"), CASES)
def test_parameter_count_matches_hand_count_and_model_card(
    shape: Shape, name: str, hand: int, published: float
) -> None:
    total = count_parameters(shape(name)).total
    assert total == hand
    assert total == pytest.approx(published, rel=0.005)


def test_llama_8b_exact_numbers(shape: Shape) -> None:
    params = count_parameters(shape("meta-llama--Llama-3.1-8B"))
    assert params.total == 8_030_261_248
    assert human_params(params.total) == "8.03B"
    assert weight_bytes(params, 2, None) == 16_060_522_496  # 16.06 GB in bf16
    assert weight_bytes(params, 4, None) == 32_121_044_992


def test_moe_active_parameters(shape: Shape) -> None:
    mixtral = count_parameters(shape("mistralai--Mixtral-8x7B-v0.1"))
    assert mixtral.active == pytest.approx(12.9e9, rel=0.005)  # 2 of 8 experts
    qwen = count_parameters(shape("Qwen--Qwen3-30B-A3B"))
    # 48 layers: attention 2·2048·4096 + 2·2048·512, 128 experts of 3·2048·768, router 2048·128
    layer = 2 * 2048 * 4096 + 2 * 2048 * 512 + 128 * 3 * 2048 * 768 + 2048 * 128 + 2 * 2048
    assert qwen.total == 48 * layer + 2 * 151936 * 2048 + 2048
    assert qwen.total == pytest.approx(30.5e9, rel=0.005)
    assert qwen.active == pytest.approx(3.3e9, rel=0.02)  # "A3B": 8 of 128 experts


def test_deepseek_mla_and_shared_experts(shape: Shape) -> None:
    params = count_parameters(shape("deepseek-ai--DeepSeek-V2-Lite"))
    # MLA per layer: q 2048·16·192, kv_a 2048·576 (+512 norm), kv_b 512·16·256, o 16·128·2048
    attention = 27 * (2048 * 16 * 192 + 2048 * 576 + 512 * 16 * 256 + 16 * 128 * 2048)
    dense = 3 * 2048 * 10944  # first_k_dense_replace = 1
    moe = 26 * (64 * 3 * 2048 * 1408 + 3 * 2048 * 2 * 1408 + 2048 * 64)
    assert params.total == attention + dense + moe + 27 * (512 + 2 * 2048) + 2048 + 2 * 102400 * 2048
    assert params.total == pytest.approx(15.7e9, rel=0.005)


def test_awq_weights_keep_embeddings_in_fp16(shape: Shape) -> None:
    awq = shape("hugging-quants--Meta-Llama-3.1-8B-Instruct-AWQ-INT4")
    params = count_parameters(awq)
    linear = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    assert params.linear == linear
    expected = round(linear * (0.5 + 2.5 / 128)) + (params.total - linear) * 2
    assert weight_bytes(params, 2, awq.quantization) == expected
    assert expected / 1e9 == pytest.approx(5.73, abs=0.01)  # the published checkpoint is 5.73 GB


@pytest.mark.parametrize(
    ("name", "kv_bytes", "per_token"),
    [
        ("meta-llama--Llama-3.1-8B", 2, 2 * 32 * 8 * 128 * 2),  # 128 KiB
        ("meta-llama--Llama-3.1-8B", 1, 2 * 32 * 8 * 128),  # fp8 KV cache
        ("meta-llama--Llama-3.1-70B", 2, 2 * 80 * 8 * 128 * 2),  # 320 KiB
        ("meta-llama--Llama-3.2-1B", 2, 2 * 16 * 8 * 64 * 2),
        ("Qwen--Qwen2.5-7B", 2, 2 * 28 * 4 * 128 * 2),
        ("deepseek-ai--DeepSeek-V2-Lite", 2, 27 * (512 + 64) * 2),  # one MLA latent per layer
    ],
)
def test_kv_cache_bytes_per_token(shape: Shape, name: str, kv_bytes: int, per_token: int) -> None:
    assert kv_bytes_per_token(shape(name), kv_bytes) == per_token


def test_llama_8b_kv_is_128_kib_per_token(shape: Shape) -> None:
    assert kv_bytes_per_token(shape("meta-llama--Llama-3.1-8B"), 2) == 128 * 1024


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (8_030_261_248, "8.03B"),
        (405_853_388_800, "405.85B"),
        (41_943_040, "41.94M"),
        (1_500, "1.50K"),
        (12, "12"),
        (2 * 10**12, "2.00T"),
    ],
)
def test_human_params(count: int, text: str) -> None:
    assert human_params(count) == text
