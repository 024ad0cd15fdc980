"""Render a BigModel into the serving application's typed args (the serveConfigV2 contract).

The shape is `bigmodel_serving.args.ServeArgs`; a contract test proves every rendering parses. This
module does not import the serving package: the operator and the workload share only the data.
"""

from __future__ import annotations

from typing import Any

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.placement import Placement
from bigmodel_operator.builders.volumes import Mounts
from bigmodel_operator.config import OperatorConfig

API_KEYS_DIR = "/etc/bigmodel/auth"
API_KEYS_FILE = f"{API_KEYS_DIR}/api-keys"
HF_TOKEN_ENV = "HF_TOKEN"
APP_IMPORT_PATH = "bigmodel_serving.app:build_app"


def served_name(name: str, spec: BigModelSpec) -> str:
    """The model name clients send: spec.model.servedName, or the BigModel's name."""
    return spec.model.served_name or name


def scaling_args(spec: BigModelSpec, config: OperatorConfig) -> dict[str, Any]:
    """Serve replica bounds from the one `spec.scaling` block (fixed replicas => min == max)."""
    scaling = spec.scaling
    target = (scaling.target_ongoing_requests if scaling else None) or config.default_target_ongoing_requests
    if scaling and scaling.replicas is not None:
        # replicas: 0 keeps the application deployable but holds no GPU until traffic arrives.
        low, high = scaling.replicas, max(1, scaling.replicas)
    else:
        low = scaling.min_replicas if scaling and scaling.min_replicas is not None else 1
        high = scaling.max_replicas if scaling and scaling.max_replicas is not None else max(1, low)
    return {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": target}


def engine_args(spec: BigModelSpec, place: Placement) -> dict[str, Any]:
    """Typed engine arguments with the plan's parallelism and context length filled in."""
    eng = spec.engine
    args: dict[str, Any] = {
        "tensor_parallel_size": place.tensor_parallel_size,
        "pipeline_parallel_size": place.pipeline_parallel_size,
    }
    if place.max_model_len:
        args["max_model_len"] = place.max_model_len
    if eng:
        for key in ("dtype", "quantization", "gpu_memory_utilization", "enable_prefix_caching"):
            value = getattr(eng, key)
            if value is not None:
                args[key] = value
        extra = list(eng.extra_args or [])
        if eng.kv_cache_dtype:
            extra.append(f"--kv-cache-dtype={eng.kv_cache_dtype}")
        if eng.max_num_seqs:
            extra.append(f"--max-num-seqs={eng.max_num_seqs}")
        if extra:
            args["extra_args"] = extra
    return args


def render_serve_args(
    name: str, spec: BigModelSpec, place: Placement, mounts: Mounts, config: OperatorConfig
) -> dict[str, Any]:
    """The `args` of the serve application, in the serving package's snake_case contract."""
    model: dict[str, Any] = {"uri": spec.model.uri, "served_name": served_name(name, spec)}
    if spec.model.revision:
        model["revision"] = spec.model.revision
    if spec.model.tokenizer:
        model["tokenizer"] = spec.model.tokenizer
    local = mounts.local_path(spec.model.uri)
    if local:
        model["local_path"] = local
    adapters = []
    for adapter in spec.adapters or []:
        entry: dict[str, Any] = {"name": adapter.name, "uri": adapter.uri}
        adapter_local = mounts.local_path(adapter.uri)
        if adapter_local:
            entry["local_path"] = adapter_local
        adapters.append(entry)
    auth_ref = spec.auth.api_keys_secret_ref if spec.auth else None
    return {
        "model": model,
        "engine": place.engine,
        "engine_args": engine_args(spec, place),
        "adapters": adapters,
        "auth": {"api_keys_file": API_KEYS_FILE if auth_ref else None},
        "scaling": scaling_args(spec, config),
        "replica_resources": {"num_gpus": place.gpus_per_replica, "num_cpus": 1},
        "hf_token_env": HF_TOKEN_ENV,
    }


REQUEST_TIMEOUT_S = 600  # the serving app's default limits.request_timeout_s


def serve_config(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """serveConfigV2 with one application running our app builder.

    The proxy's own timeout sits just above the app's, so the app answers 504 with an OpenAI-style
    body before the proxy cuts the connection.
    """
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": 8000, "request_timeout_s": REQUEST_TIMEOUT_S + 5},
        "applications": [{"name": name, "route_prefix": "/", "import_path": APP_IMPORT_PATH, "args": args}],
    }
