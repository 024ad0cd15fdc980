"""Hostile or mistaken config.json values: refused with a reason, in bounded time, never planned."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bigmodel_operator.planning import (
    ModelConfigError,
    ModelConfigOutOfBoundsError,
    PlanningError,
    lookup_gpu,
    parse_model_config,
    plan_serving,
)
from bigmodel_operator.planning.errors import INVALID_PARALLELISM, MAX_MODEL_LEN_TOO_LONG, QUANTIZATION_MISMATCH
from bigmodel_operator.planning.model_config import LIMITS
from bigmodel_operator.planning.parallel import candidate_layouts

H100 = lookup_gpu("NVIDIA-H100-80GB-HBM3")
LLAMA = "meta-llama--Llama-3.1-8B"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_hidden_layers", 10**15),
        ("hidden_size", 10**12),
        ("num_attention_heads", 2**40),
        ("num_key_value_heads", 2**40),
        ("intermediate_size", 10**18),
        ("vocab_size", 10**10),
        ("max_position_embeddings", 10**30),
        ("head_dim", 10**9),
        ("num_local_experts", 10**9),
        ("sliding_window", 10**40),
        ("num_hidden_layers", 10**4000),
    ],
)
def test_absurd_numbers_are_refused_with_the_key(config: Callable[[str], dict[str, Any]], key: str, value: int) -> None:
    cfg = {**config(LLAMA), key: value}
    with pytest.raises(ModelConfigOutOfBoundsError) as error:
        parse_model_config(cfg)
    assert "beyond any real model" in str(error.value)
    assert len(str(error.value)) < 300, "a huge number is not echoed back"


def test_every_limit_admits_the_largest_real_models(shape: Callable[[str], Any]) -> None:
    big = shape("meta-llama--Llama-3.1-405B")
    assert big.num_hidden_layers < LIMITS["num_hidden_layers"] / 10
    assert big.hidden_size < LIMITS["hidden_size"] / 4


def test_vision_encoder_numbers_are_bounded_too(config: Callable[[str], dict[str, Any]]) -> None:
    cfg = {**config(LLAMA), "vision_config": {"hidden_size": 1024, "num_hidden_layers": 10**12}}
    with pytest.raises(ModelConfigOutOfBoundsError):
        parse_model_config(cfg)


def test_out_of_bounds_is_a_model_config_error() -> None:
    assert issubclass(ModelConfigOutOfBoundsError, ModelConfigError)


def test_planning_cost_does_not_grow_with_the_layer_count(config: Callable[[str], dict[str, Any]]) -> None:
    """At the layer bound, with every GPU count allowed, the candidate layouts stay few."""
    cfg = {**config(LLAMA), "num_hidden_layers": LIMITS["num_hidden_layers"], "hidden_size": 16384}
    cfg["num_attention_heads"] = cfg["num_key_value_heads"] = 128
    shape = parse_model_config(cfg)
    layouts = candidate_layouts(shape, None, tp_fixed=None, pp_fixed=None, gpus_per_node=8, max_gpus=64)
    assert len(layouts) <= 4 + 64, "pipeline candidates are bounded by the GPUs, not by the layers"
    assert plan_serving(shape, H100).pipeline_parallel_size <= 64


def test_spec_caused_plan_errors_carry_their_own_reasons(shape: Callable[[str], Any]) -> None:
    llama = shape(LLAMA)
    with pytest.raises(PlanningError) as tp:
        plan_serving(llama, H100, tensor_parallel_size=3)
    assert tp.value.reason == INVALID_PARALLELISM
    with pytest.raises(PlanningError) as awq:
        plan_serving(llama, H100, quantization="awq")
    assert awq.value.reason == QUANTIZATION_MISMATCH
    with pytest.raises(PlanningError) as length:
        plan_serving(llama, H100, max_model_len=10_000_000)
    assert length.value.reason == MAX_MODEL_LEN_TOO_LONG
    assert "lower spec.engine.maxModelLen" in str(length.value)
