"""`build_app`: the Ray Serve application builder named in the operator's serveConfigV2.

    applications:
      - name: <bigmodel name>
        import_path: bigmodel_serving.app:build_app
        args: <ServeArgs>
        deployments: [BigModelIngress options, BigModelEngine options]   (see args.py)

Three deployments: `BigModelEngine` (Ray Serve LLM's `LLMServer` running vLLM, one per replica),
`BigModelIngress` (Ray's OpenAI router behind our guard) and `BigModelMetrics` (GET /metrics on a port of
its own, on the Ray head; none when `args.metrics` is null). The defaults here are what runs when the
config names no deployment options: one replica each, and auth on with no key (every /v1 request gets
401 until keys are configured: fail closed; before its first configuration the ingress answers 503).

Only Ray Serve LLM's public API is used here (`ray.serve.llm`: `LLMConfig`, `LLMServer`'s deployment
options, the ingress); what still needs a private name is in ray_internals.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from bigmodel_serving.args import (
    ENGINE_DEPLOYMENT,
    INGRESS_DEPLOYMENT,
    METRICS_DEPLOYMENT,
    InvalidServeArgsError,
    ServeArgs,
    parse_serve_args,
)
from bigmodel_serving.engine_args import check_extra_engine_args, installed_vllm_arg_names, llm_config_fields

if TYPE_CHECKING:
    from ray.serve import Application

DEFAULT_KEYS_DIR = "/etc/bigmodel/api-keys"
DEFAULT_INGRESS_CONFIG: dict[str, Any] = {"auth": {"mode": "api_keys", "keys_dir": DEFAULT_KEYS_DIR}}
ROUTER_TIMEOUT_ENV = "RAY_SERVE_LLM_ROUTER_HTTP_TIMEOUT"


def ingress_options(args: ServeArgs) -> dict[str, Any]:
    """Serve options of the ingress deployment (the autoscaling bounds and user_config are overridable)."""
    return {
        "name": INGRESS_DEPLOYMENT,
        # The proxy never queues or refuses for the ingress: backpressure comes from the engine
        # deployment's queue, and the ingress answers it with an OpenAI-style 429.
        "max_ongoing_requests": 10_000,
        "max_queued_requests": -1,
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 500},
        "ray_actor_options": {
            "num_cpus": 0,
            "runtime_env": {"env_vars": {ROUTER_TIMEOUT_ENV: str(args.request_timeout_s)}},
        },
        "user_config": DEFAULT_INGRESS_CONFIG,
        "health_check_period_s": 10,
        "graceful_shutdown_timeout_s": min(args.request_timeout_s, 60),
    }


def metrics_options() -> dict[str, Any]:
    """Serve options of the metrics deployment: one replica on the Ray head, no CPU."""
    from bigmodel_serving.ray_internals import HEAD_NODE_RESOURCE

    return {
        "name": METRICS_DEPLOYMENT,
        "num_replicas": 1,
        "max_ongoing_requests": 100,
        "ray_actor_options": {"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}},
        "health_check_period_s": 10,
    }


def model_card(model_id: str, llm_config: Any) -> dict[str, Any]:
    """GET /v1/models' entry for the base model (the fields Ray's router shows)."""
    return {
        "id": model_id,
        "object": "model",
        "owned_by": "organization-owner",
        "permission": [],
        "metadata": {
            "model_id": llm_config.model_id,
            "input_modality": llm_config.input_modality,
            "max_request_context_length": llm_config.max_request_context_length,
        },
    }


def check_engine_config_values(engine_kwargs: dict[str, Any]) -> None:
    """Validate nested vLLM config values (e.g. `structured_outputs_config`) now, not in every replica."""
    from bigmodel_serving.ray_internals import normalize_vllm_engine_kwargs

    try:
        normalize_vllm_engine_kwargs(engine_kwargs)
    except ValueError as error:
        raise InvalidServeArgsError(f"invalid bigmodel serve args:\n  engine_args.extra: {error}") from None


def build_app(args: dict[str, Any] | ServeArgs) -> Application:
    """Validate `args` and return the application; bad args raise `InvalidServeArgsError`.

    Building starts nothing: vLLM loads when Serve starts the engine replicas.
    """
    from ray import serve
    from ray.serve.llm import LLMConfig

    from bigmodel_serving.engine import BigModelEngine
    from bigmodel_serving.ingress import IngressDeployment

    serve_args = parse_serve_args(args)
    check_extra_engine_args(serve_args.engine_args.extra, installed_vllm_arg_names())
    fields = llm_config_fields(serve_args)
    check_engine_config_values(fields["engine_kwargs"])
    llm_config = LLMConfig(**fields)
    engine_options = BigModelEngine.get_deployment_options(llm_config)
    engine_options.setdefault("user_config", {"adapters": []})
    if serve_args.engine_args.max_num_seqs and "max_queued_requests" not in engine_options:
        engine_options["max_queued_requests"] = 4 * serve_args.engine_args.max_num_seqs
    engine_options["name"] = ENGINE_DEPLOYMENT
    deployment = cast(Any, serve.deployment)
    cpu_kv_fraction = None
    if serve_args.resources.is_cpu and "kv_cache_memory_bytes" not in serve_args.engine_args.extra:
        cpu_kv_fraction = serve_args.engine_args.gpu_memory_utilization
    engine = deployment(BigModelEngine, **engine_options).bind(
        llm_config, hf_token_env=serve_args.hf_token_env, cpu_kv_cache_fraction=cpu_kv_fraction
    )
    metrics_server = None
    if serve_args.metrics is not None:
        from bigmodel_serving.metrics_server import BigModelMetrics

        listener = serve_args.metrics
        metrics_server = deployment(BigModelMetrics, **metrics_options()).bind(
            engine, host=listener.host, port=listener.port
        )
    model_id = llm_config.model_id
    return deployment(IngressDeployment, **ingress_options(serve_args)).bind(
        llm_deployments={model_id: engine},
        model_cards={model_id: model_card(model_id, llm_config)},
        metrics_server=metrics_server,
    )
