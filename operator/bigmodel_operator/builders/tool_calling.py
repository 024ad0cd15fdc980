"""Which vLLM tool-call parser a BigModel's engine gets, from the model's family in config.json.

vLLM answers `tool_choice` auto, required and named only with a tool-call parser (`--tool-call-parser`, and
`--enable-auto-tool-choice` for auto); without one all three are 400. Required and named do not depend on
the model's own format: vLLM constrains the output to the tools' JSON schema and parses that JSON, so any
parser serves them. Auto needs the parser that reads what the model writes when it calls a tool, which is
a property of its family (and chat template): the table below follows vLLM's tool-calling guide. A family
we do not know gets `hermes` (`<tool_call>{...}</tool_call>`, the format most fine-tunes and Qwen use):
required and named then work for every model, and auto for those that write that format.

`spec.engine.toolCallParser` overrides the choice; `none` turns tool calling off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.api.bigmodel import TOOL_PARSER_OFF

FALLBACK_PARSER = "hermes"

# config.json model_type -> vLLM tool-call parser (vLLM 0.29's tool-calling guide).
FAMILY_PARSERS: dict[str, str] = {
    "llama4": "llama4_pythonic",
    "mistral": "mistral",
    "mixtral": "mistral",
    "mistral3": "mistral",
    "ministral": "mistral",
    "qwen2": "hermes",
    "qwen2_moe": "hermes",
    "qwen2_5_vl": "hermes",
    "qwen3": "hermes",
    "qwen3_moe": "hermes",
    "qwen3_next": "hermes",
    "qwen3_vl": "hermes",
    "qwen3_vl_moe": "hermes",
    "granite": "granite",
    "granitemoe": "granite",
    "granitemoehybrid": "granite4",
    "internlm2": "internlm",
    "jamba": "jamba",
    "deepseek_v3": "deepseek_v3",
    "deepseek_v32": "deepseek_v32",
    "kimi_k2": "kimi_k2",
    "gpt_oss": "openai",
    "glm4_moe": "glm45",
    "minimax_m2": "minimax_m2",
    "hunyuan_v1_moe": "hunyuan_a13b",
    "ernie4_5": "ernie45",
    "ernie4_5_moe": "ernie45",
    "seed_oss": "seed_oss",
    "olmo3": "olmo3",
    "lfm2": "lfm2",
    "gemma4": "gemma4",
    "step3": "step3",
    "longcat_flash": "longcat",
    "apertus": "apertus",
}


def _families(config: Mapping[str, Any]) -> list[str]:
    """config.json's model_type, then that of its language model (multimodal wrappers such as Llava)."""
    text = config.get("text_config")
    found = [config.get("model_type"), text.get("model_type") if isinstance(text, Mapping) else None]
    return [value for value in found if isinstance(value, str) and value]


def _llama3_tokenizer(config: Mapping[str, Any]) -> bool:
    """Llama 3.1 and later (rope type `llama3`): their tokenizer has `<|python_tag|>`, which vLLM's llama3_json
    parser needs (it refuses a tokenizer without it). Llama 2, Llama 3.0 and Llama-shaped models that are not
    Meta's do not say `llama3`."""
    for key in ("rope_scaling", "rope_parameters"):
        rope = config.get(key)
        if isinstance(rope, Mapping) and rope.get("rope_type", rope.get("type")) == "llama3":
            return True
    return False


def parser_for_config(config: Mapping[str, Any] | None) -> str:
    """vLLM's tool-call parser for a model's config.json (the fallback when it is unknown or absent)."""
    if not config:
        return FALLBACK_PARSER
    for family in _families(config):
        if family == "llama":
            text = config.get("text_config")
            llama3 = _llama3_tokenizer(config) or (isinstance(text, Mapping) and _llama3_tokenizer(text))
            return "llama3_json" if llama3 else FALLBACK_PARSER
        if family in FAMILY_PARSERS:
            return FAMILY_PARSERS[family]
    return FALLBACK_PARSER


def tool_call_parser(spec: BigModelSpec, config: Mapping[str, Any] | None) -> str | None:
    """The parser the engine runs with: `engine.toolCallParser`, else from the family; None when turned off."""
    chosen = spec.engine.tool_call_parser if spec.engine else None
    if chosen == TOOL_PARSER_OFF:
        return None
    return chosen or parser_for_config(config)


def tool_engine_args(parser: str | None) -> dict[str, Any]:
    """vLLM's frontend arguments for that parser (empty: tool calling off)."""
    return {"enable_auto_tool_choice": True, "tool_call_parser": parser} if parser else {}
