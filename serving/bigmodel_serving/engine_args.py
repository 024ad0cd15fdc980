"""ServeArgs -> Ray Serve LLM's `LLMConfig` fields and vLLM engine keyword arguments (pure; no vllm needed).

`check_extra_engine_args` compares `engine_args.extra` with the argument names of the installed vLLM
(`AsyncEngineArgs` and the OpenAI frontend's `FrontendArgs` dataclasses); the operator does the same
check at admission against a list generated from the pinned vLLM.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bigmodel_serving.args import ENGINE_DEPLOYMENT, InvalidServeArgsError, ServeArgs


def vllm_engine_kwargs(args: ServeArgs) -> dict[str, Any]:
    """Ray Serve LLM's `engine_kwargs`: typed settings, LoRA slots, then `extra` (None = vLLM's default)."""
    engine = args.engine_args
    kwargs: dict[str, Any] = {
        "tokenizer": args.model.tokenizer,
        "revision": None if args.model.resolved_local_path() else args.model.revision,
        "dtype": engine.dtype,
        "quantization": engine.quantization,
        "kv_cache_dtype": engine.kv_cache_dtype,
        "max_model_len": engine.max_model_len,
        "max_num_seqs": engine.max_num_seqs,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "pipeline_parallel_size": engine.pipeline_parallel_size,
        "enable_prefix_caching": engine.enable_prefix_caching,
        "enforce_eager": engine.enforce_eager,
    }
    if args.lora is not None:
        kwargs.update(
            enable_lora=True,
            max_lora_rank=args.lora.max_lora_rank,
            max_loras=args.lora.max_loras,
            max_cpu_loras=args.lora.max_cpu_loras,
        )
    kwargs.update(engine.extra)
    return {key: value for key, value in kwargs.items() if value is not None}


def model_source(args: ServeArgs) -> str:
    """What vLLM loads: the mounted directory, else the hub id (hf://), else the URI itself."""
    local = args.model.resolved_local_path()
    if local is not None:
        return str(local)
    return args.model.hub_id() or args.model.uri


def llm_config_fields(args: ServeArgs) -> dict[str, Any]:
    """Keyword arguments of `ray.serve.llm.LLMConfig` for these args (the engine deployment)."""
    fields: dict[str, Any] = {
        "model_loading_config": {"model_id": args.model.served_name, "model_source": model_source(args)},
        "engine_kwargs": vllm_engine_kwargs(args),
        # vLLM's own Prometheus logger (`vllm:` names) in the replica process; the ingress serves
        # it on /metrics. Ray's variant would send them to Ray's metrics agent under other names.
        "log_engine_metrics": False,
        "deployment_config": {
            "name": ENGINE_DEPLOYMENT,
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 16},
            "ray_actor_options": {"num_cpus": args.resources.num_cpus},
            # A replica is only killed after its engine stopped answering for this long.
            "health_check_period_s": 10,
            "health_check_timeout_s": 60,
            "graceful_shutdown_timeout_s": min(args.request_timeout_s, 60),
        },
    }
    if args.resources.is_cpu:
        # Ray Serve LLM asks for one GPU bundle per worker by default, and adds the replica actor's
        # resources to the first bundle. vLLM's CPU engine runs in the replica's own processes (its mp
        # executor, no Ray workers), so the replica's CPUs are the whole bundle: the actor takes none of
        # its own, or a 1-CPU replica would ask Ray for 2 and never fit a 1-CPU worker pod.
        fields["placement_group_config"] = {"bundles": [{"CPU": args.resources.num_cpus}]}
        fields["deployment_config"]["ray_actor_options"] = {"num_cpus": 0}
    if args.lora is not None:
        fields["lora_config"] = {"max_num_adapters_per_replica": args.lora.max_cpu_loras or args.lora.max_loras}
    if args.engine_args.max_num_seqs:
        fields["deployment_config"]["max_ongoing_requests"] = args.engine_args.max_num_seqs
    return fields


def check_extra_engine_args(extra: Iterable[str], known: set[str]) -> None:
    """Raise `InvalidServeArgsError` naming every `extra` argument the installed vLLM does not have."""
    unknown = sorted(set(extra) - known)
    if unknown:
        raise InvalidServeArgsError(
            "invalid bigmodel serve args:\n"
            + "\n".join(f"  engine_args.extra.{name}: not an engine argument of the installed vLLM" for name in unknown)
        )


def installed_vllm_arg_names() -> set[str]:
    """The names `engine_kwargs` may use with the installed vLLM (imports vllm)."""
    import dataclasses

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import FrontendArgs

    return {field.name for field in dataclasses.fields(AsyncEngineArgs)} | {
        field.name for field in dataclasses.fields(FrontendArgs)
    }
