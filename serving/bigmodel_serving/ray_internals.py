"""The only place that touches Ray Serve LLM's private modules (`ray.llm._internal`), for what its public
surface (`ray.serve.llm`, `ray.serve.llm.deployment`, `ray.serve.llm.ingress`,
`ray.serve.llm.openai_api_models`) does not offer in the pinned Ray (2.60):

- adapters from our own locations: `LLMServer(model_downloader=...)` is public, but the loader class it
  takes (`LoraModelLoader`), the config it returns (`DiskMultiplexConfig`) and the per-process adapter id
  counter (`global_id_manager`) are not. Ray's own loader reads one `dynamic_lora_loading_path` prefix
  with its cloud filesystem; our adapters are mounted directories or s3:// prefixes on any endpoint.
- the error Ray's router raises for an engine `ErrorResponse` (`OpenAIHTTPException`): the ingress
  answers it by type with the status it carries.
- `normalize_vllm_engine_kwargs`: how Ray turns nested vLLM config dicts (`structured_outputs_config`,
  ...) into vLLM's config classes, so `build_app` refuses a bad one before any replica starts.
- `HEAD_NODE_RESOURCE`: the resource only the Ray head node has (Ray's own state actors use it to be
  placed there); the metrics deployment asks for a sliver of it.

`check_pinned_ray()` lists what changed when Ray is upgraded (a unit test runs it and fails with that
list); fix this module, and nothing else needs to change.
"""

from __future__ import annotations

import inspect
from typing import Any

from ray.llm._internal.common.models import global_id_manager
from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig
from ray.llm._internal.serve.core.configs.openai_api_models import OpenAIHTTPException
from ray.llm._internal.serve.engines.vllm.vllm_engine import _normalize_vllm_engine_kwargs
from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader

HEAD_NODE_RESOURCE = "node:__internal_head__"

__all__ = [
    "HEAD_NODE_RESOURCE",
    "LoraModelLoader",
    "OpenAIHTTPException",
    "adapter_config",
    "check_pinned_ray",
    "normalize_vllm_engine_kwargs",
]


def adapter_config(model_id: str, local_path: str) -> DiskMultiplexConfig:
    """What a `LoraModelLoader.load_model_from_config` returns: the adapter's directory and a new id."""
    return DiskMultiplexConfig(
        model_id=model_id,
        max_total_tokens=None,
        local_path=local_path,
        lora_assigned_int_id=global_id_manager.next(),
    )


def normalize_vllm_engine_kwargs(engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    """vLLM's config classes for nested dicts; a bad value raises ValueError."""
    return dict(_normalize_vllm_engine_kwargs(engine_kwargs))


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def check_pinned_ray() -> list[str]:
    """What this module (and the public classes we subclass) expects of Ray, and is not so: [] when all holds."""
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME
    from ray.serve.llm.deployment import LLMServer
    from ray.serve.llm.ingress import OpenAiIngress

    problems = []
    expectations: list[tuple[str, bool]] = [
        (f"the head node's resource is {HEAD_NODE_RESOURCE!r}", HEAD_NODE_RESOURCE_NAME == HEAD_NODE_RESOURCE),
        (
            "LLMServer.__init__(llm_config, *, engine_cls, model_downloader)",
            _parameters(LLMServer.__init__)[:2] == ["self", "llm_config"]
            and "model_downloader" in _parameters(LLMServer.__init__),
        ),
        (
            "LoraModelLoader.load_model_from_config(self, lora_model_id, llm_config)",
            _parameters(LoraModelLoader.load_model_from_config) == ["self", "lora_model_id", "llm_config"],
        ),
        (
            "DiskMultiplexConfig fields model_id, max_total_tokens, local_path, lora_assigned_int_id",
            {"model_id", "max_total_tokens", "local_path", "lora_assigned_int_id"}
            <= set(DiskMultiplexConfig.model_fields),
        ),
        ("global_id_manager.next()", callable(getattr(global_id_manager, "next", None))),
        (
            "OpenAIHTTPException(status_code, message, type, internal_message)",
            _parameters(OpenAIHTTPException.__init__)[:3] == ["self", "status_code", "message"],
        ),
        (
            "_normalize_vllm_engine_kwargs(engine_kwargs)",
            _parameters(_normalize_vllm_engine_kwargs) == ["engine_kwargs"],
        ),
        (
            "OpenAiIngress.__init__(llm_deployments, model_cards, *, lora_paths)",
            _parameters(OpenAiIngress.__init__)[:3] == ["self", "llm_deployments", "model_cards"],
        ),
        (
            "OpenAiIngress.chat/completions(body, request) -> Response",
            _parameters(OpenAiIngress.chat) == ["self", "body", "request"]
            and _parameters(OpenAiIngress.completions) == ["self", "body", "request"],
        ),
    ]
    for expected, holds in expectations:
        if not holds:
            problems.append(expected)
    return problems
