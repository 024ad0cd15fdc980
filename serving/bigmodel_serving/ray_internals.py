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
- `POST /v1/responses` (responses_api.py): Ray routes no Responses requests, but its vLLM engine keeps
  vLLM's serving state (`VLLMEngine._app_state`, with vLLM's `OpenAIServingResponses`), and an adapter's
  request must first load the adapter the way Ray's own routes do
  (`LLMServer._maybe_resolve_lora_from_multiplex`).
- a new request router for the engine: Serve builds a handle's router on its first request and never
  swaps it, so after a routing-policy edit the ingress must hold new engine handles; Ray's router keeps
  them in `OpenAiIngress._default_serve_handles` / `_configured_serve_handles`.
- the prefix tree of `PrefixCacheAffinityRouter` (`PrefixTreeActor`): a test gives a router a tree of its own
  (`initialize_state(tree_actor=...)`, Ray's parameter for tests) instead of the detached actor the router
  otherwise registers with the Serve controller (tests/integration/serving/test_serving_routing_affinity.py).
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
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import PrefixTreeActor
from ray.llm._internal.serve.utils.lora_serve_utils import LoraModelLoader

HEAD_NODE_RESOURCE = "node:__internal_head__"

__all__ = [
    "HEAD_NODE_RESOURCE",
    "LoraModelLoader",
    "OpenAIHTTPException",
    "PrefixTreeActor",
    "adapter_config",
    "check_pinned_ray",
    "normalize_vllm_engine_kwargs",
    "replace_engine_handles",
    "resolve_multiplexed_adapter",
    "vllm_responses_handler",
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


def vllm_responses_handler(server: Any) -> Any:
    """vLLM's `OpenAIServingResponses` of an `LLMServer`'s started engine, None when it has none."""
    state = getattr(getattr(server, "engine", None), "_app_state", None)
    return getattr(state, "openai_serving_responses", None) if state is not None else None


async def resolve_multiplexed_adapter(server: Any) -> None:
    """Load the adapter this request is multiplexed to (Serve's multiplexed model id), as Ray's routes do."""
    await server._maybe_resolve_lora_from_multiplex()


def replace_engine_handles(ingress: Any, handle: Any) -> None:
    """Make Ray's OpenAI router (`ingress`) call the engine through `handle` from now on."""
    ingress._default_serve_handles = dict.fromkeys(ingress._default_serve_handles, handle)
    ingress._configured_serve_handles.clear()


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def check_pinned_ray() -> list[str]:
    """What this module (and the public classes we subclass) expects of Ray, and is not so: [] when all holds."""
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME
    from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
    from ray.serve.llm.deployment import LLMServer
    from ray.serve.llm.ingress import OpenAiIngress
    from ray.serve.llm.request_router import PrefixCacheAffinityRouter

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
            "LLMServer._maybe_resolve_lora_from_multiplex(self)",
            _parameters(getattr(LLMServer, "_maybe_resolve_lora_from_multiplex", lambda: None)) == ["self"],
        ),
        (
            "VLLMEngine keeps vLLM's serving state as _app_state",
            "self._app_state = state" in inspect.getsource(VLLMEngine.start),
        ),
        (
            "OpenAiIngress keeps its engine handles in _default_serve_handles and _configured_serve_handles",
            all(
                f"self.{name}" in inspect.getsource(OpenAiIngress.__init__)
                for name in ("_default_serve_handles", "_configured_serve_handles")
            ),
        ),
        (
            "PrefixCacheAffinityRouter.initialize_state(..., tree_actor) and PrefixTreeActor.remote()",
            "tree_actor" in _parameters(PrefixCacheAffinityRouter.initialize_state)
            and callable(getattr(PrefixTreeActor, "remote", None)),
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
