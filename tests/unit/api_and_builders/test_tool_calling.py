"""The engine's tool-call parser: from the model's family in config.json, overridable, refused when unknown."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.api.bigmodel import EngineSpec
from bigmodel_operator.api.vllm_tool_parsers import TOOL_CALL_PARSERS
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.builders.tool_calling import FALLBACK_PARSER, FAMILY_PARSERS, parser_for_config
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.crdgen import openapi_schema
from bigmodel_operator.local import local_application

from .conftest import EXAMPLES, ROOT, load_example

CONFIGS = ROOT / "tests/data/model-configs"


def _config(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CONFIGS / f"{name}.json").read_text())
    return loaded


def test_every_family_names_a_parser_the_pinned_vllm_has() -> None:
    assert set(FAMILY_PARSERS.values()) | {FALLBACK_PARSER, "llama3_json"} <= set(TOOL_CALL_PARSERS)


@pytest.mark.parametrize(
    ("model", "parser"),
    [
        ("meta-llama--Llama-3.1-8B", "llama3_json"),
        ("meta-llama--Llama-3.2-1B", "llama3_json"),
        ("hugging-quants--Meta-Llama-3.1-8B-Instruct-AWQ-INT4", "llama3_json"),
        ("Qwen--Qwen2.5-7B", "hermes"),
        ("Qwen--Qwen3-30B-A3B", "hermes"),
        ("mistralai--Mixtral-8x7B-v0.1", "mistral"),
        ("deepseek-ai--DeepSeek-V2-Lite", FALLBACK_PARSER),  # a family vLLM has no parser for
    ],
)
def test_parser_from_real_configs(model: str, parser: str) -> None:
    assert parser_for_config(_config(model)) == parser


def test_llama_shaped_models_without_llama3_rope_get_the_fallback() -> None:
    """vLLM's llama3_json refuses a tokenizer without <|python_tag|> (Llama 2, 3.0, the tiny test model)."""
    assert parser_for_config({"model_type": "llama", "rope_scaling": None}) == FALLBACK_PARSER
    assert parser_for_config({"model_type": "llama", "rope_parameters": {"rope_type": "llama3"}}) == "llama3_json"
    assert parser_for_config({"model_type": "llava", "text_config": {"model_type": "mistral"}}) == "mistral"
    assert parser_for_config({"text_config": {"model_type": "qwen3"}}) == "hermes"
    assert parser_for_config(None) == FALLBACK_PARSER


def _extra(body: dict[str, Any], model_config: dict[str, Any] | None) -> dict[str, Any]:
    spec = BigModelSpec.model_validate(body["spec"])
    rs = build_rayservice(body, spec, placement(spec, None, model_config), OperatorConfig())
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    extra: dict[str, Any] = app["args"]["engine_args"].get("extra", {})
    return extra


def test_rendered_into_the_engine_args() -> None:
    body = load_example("bigmodel-llama-3.1-8b.yaml")
    extra = _extra(body, _config("meta-llama--Llama-3.1-8B"))
    assert extra["tool_call_parser"] == "llama3_json" and extra["enable_auto_tool_choice"] is True


def test_override_and_off() -> None:
    body = load_example("bigmodel-llama-3.1-8b.yaml")
    body["spec"]["engine"]["toolCallParser"] = "pythonic"
    assert _extra(body, _config("meta-llama--Llama-3.1-8B"))["tool_call_parser"] == "pythonic"
    body["spec"]["engine"]["toolCallParser"] = "none"
    extra = _extra(body, _config("meta-llama--Llama-3.1-8B"))
    assert "tool_call_parser" not in extra and "enable_auto_tool_choice" not in extra


def test_a_parser_the_pinned_vllm_lacks_is_refused_at_admission_and_by_the_model() -> None:
    body = load_example("bigmodel-tiny-cpu.yaml")
    body["spec"]["engine"]["toolCallParser"] = "llama5_json"
    with pytest.raises(ValidationError, match="not a tool-call parser of the pinned vLLM"):
        BigModelSpec.model_validate(body["spec"])
    field = openapi_schema(EngineSpec)["properties"]["toolCallParser"]
    assert field["enum"] == [*TOOL_CALL_PARSERS, "none"]


def test_local_mode_reads_the_manifests_config() -> None:
    """`bigmodel serve` of the CPU example: the tiny Llama (no llama3 rope) gets the fallback parser."""
    manifest = yaml.safe_load((EXAMPLES / "bigmodel-tiny-cpu.yaml").read_text())
    app = local_application(manifest)
    assert app["args"]["engine_args"]["extra"] == {"enable_auto_tool_choice": True, "tool_call_parser": "hermes"}
