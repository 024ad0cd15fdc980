"""The operator -> app contract: args (heavy) vs deployment options (light), errors, engine kwargs, light imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bigmodel_serving.args import (
    ENGINE_DEPLOYMENT,
    INGRESS_DEPLOYMENT,
    InvalidServeArgsError,
    parse_application,
    parse_serve_args,
)
from bigmodel_serving.engine_args import check_extra_engine_args, llm_config_fields, vllm_engine_kwargs

GPU_ARGS: dict[str, Any] = {
    "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "served_name": "llama-8b", "local_path": "/models/l"},
    "engine_args": {
        "max_model_len": 8192,
        "max_num_seqs": 128,
        "dtype": "bfloat16",
        "tensor_parallel_size": 2,
        "extra": {"max_num_batched_tokens": 8192},
    },
    "lora": {"max_lora_rank": 64, "max_loras": 4},
    "resources": {"accelerator": "gpu", "num_cpus": 2},
}
ADAPTERS = [{"name": "sql", "uri": "pvc://adapters/sql", "local_path": "/adapters/sql"}]


def application(**overrides: Any) -> dict[str, Any]:
    app: dict[str, Any] = {
        "name": "llama",
        "route_prefix": "/",
        "import_path": "bigmodel_serving.app:build_app",
        "args": GPU_ARGS,
        "deployments": [
            {
                "name": INGRESS_DEPLOYMENT,
                "autoscaling_config": {"min_replicas": 1, "max_replicas": 2},
                "user_config": {
                    "auth": {"mode": "api_keys", "keys_dir": "/etc/bigmodel/api-keys"},
                    "quotas": {"default": {"requests_per_minute": 60}, "keys": {"batch": {"tokens_per_minute": 10}}},
                    "adapters": ADAPTERS,
                },
            },
            {
                "name": ENGINE_DEPLOYMENT,
                "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 64},
                "max_ongoing_requests": 128,
                "max_queued_requests": 256,
                "user_config": {"adapters": ADAPTERS},
            },
        ],
    }
    app.update(overrides)
    return app


def test_full_application_parses() -> None:
    app = parse_application(application())
    assert app.ingress_config().quotas.for_key("batch").tokens_per_minute == 10
    assert app.ingress_config().quotas.for_key("other").requests_per_minute == 60
    assert [a.name for a in app.engine_config().adapters] == ["sql"]


def test_auth_is_on_by_default_and_needs_a_keys_dir() -> None:
    bad = application()
    bad["deployments"][0]["user_config"]["auth"] = {}
    with pytest.raises(InvalidServeArgsError, match="keys_dir is required"):
        parse_application(bad)


def test_adapters_must_agree_and_need_lora_slots() -> None:
    mismatch = application()
    mismatch["deployments"][1]["user_config"] = {"adapters": []}
    with pytest.raises(InvalidServeArgsError, match="same adapters"):
        parse_application(mismatch)
    no_lora = application(args={**GPU_ARGS, "lora": None})
    with pytest.raises(InvalidServeArgsError, match=r"args\.lora"):
        parse_application(no_lora)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"uri": "ftp://x", "served_name": "m"}}, "scheme must be one of"),
        ({"model": {"uri": "hf://a/b", "served_name": "a:b"}}, "must not contain ':'"),
        ({"engine_args": {"max_num_seqs": 0}}, "engine_args.max_num_seqs"),
        ({"engine_args": {"extra": {"max_model_len": 5}}}, "set through engine_args.max_model_len"),
        ({"engine_args": {"extra": {"swap-space": 4}}}, "use snake_case"),
        ({"resources": {"accelerator": "cpu"}, "engine_args": {"tensor_parallel_size": 2}}, "one engine worker"),
        ({"request_timeout_s": 0}, "request_timeout_s"),
    ],
)
def test_bad_args_are_refused_with_the_field_path(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidServeArgsError, match=message):
        parse_serve_args({**GPU_ARGS, **change})


def test_light_settings_are_not_in_args() -> None:
    """What users edit often must not change the args Serve hashes into the code version."""
    heavy = set(parse_serve_args(GPU_ARGS).model_dump())
    assert heavy.isdisjoint({"adapters", "auth", "quotas", "scaling", "autoscaling_config", "max_body_bytes"})


def test_engine_kwargs_from_typed_fields_lora_and_extra() -> None:
    kwargs = vllm_engine_kwargs(parse_serve_args(GPU_ARGS))
    assert kwargs["max_num_seqs"] == 128  # the planner's concurrency is the engine's real setting
    assert kwargs["tensor_parallel_size"] == 2
    assert (kwargs["enable_lora"], kwargs["max_lora_rank"], kwargs["max_loras"]) == (True, 64, 4)
    assert kwargs["max_num_batched_tokens"] == 8192
    assert "revision" not in kwargs  # a mounted model has no revision to fetch


@pytest.mark.parametrize("num_cpus", [1, 2, 0.5])
def test_cpu_replica_asks_ray_for_its_num_cpus_only(num_cpus: float) -> None:
    """Ray Serve LLM adds the replica actor's CPUs to the first placement bundle
    (`_merge_replica_actor_and_child_actor_bundles`); on the e2e node a 1-CPU replica asked for 2 and never
    scheduled on its 1-CPU worker pod. The CPU engine runs inside the replica, so the sum is num_cpus."""
    args = parse_serve_args({**GPU_ARGS, "engine_args": {}, "resources": {"accelerator": "cpu", "num_cpus": num_cpus}})
    fields = llm_config_fields(args)
    first_bundle = fields["placement_group_config"]["bundles"][0]
    actor = fields["deployment_config"]["ray_actor_options"]
    assert first_bundle["CPU"] + actor["num_cpus"] == num_cpus
    gpu = llm_config_fields(parse_serve_args(GPU_ARGS))
    assert gpu["deployment_config"]["ray_actor_options"] == {"num_cpus": 2}  # GPU workers are Ray actors


def test_llm_config_fields_cpu_and_gpu() -> None:
    cpu = llm_config_fields(parse_serve_args({**GPU_ARGS, "engine_args": {}, "resources": {"accelerator": "cpu"}}))
    assert cpu["placement_group_config"] == {"bundles": [{"CPU": 1}]}
    assert cpu["deployment_config"]["ray_actor_options"] == {"num_cpus": 0}
    assert cpu["model_loading_config"] == {"model_id": "llama-8b", "model_source": "/models/l"}
    assert cpu["log_engine_metrics"] is False  # vLLM's own `vllm:` metrics, served on /metrics
    gpu = llm_config_fields(parse_serve_args(GPU_ARGS))
    assert "placement_group_config" not in gpu  # Ray's default: one GPU bundle per worker
    assert gpu["deployment_config"]["max_ongoing_requests"] == 128
    assert gpu["lora_config"] == {"max_num_adapters_per_replica": 4}


def test_unknown_extra_engine_args_are_named() -> None:
    with pytest.raises(InvalidServeArgsError, match=r"extra\.swap_space: not an engine argument"):
        check_extra_engine_args(["swap_space", "max_num_batched_tokens"], {"max_num_batched_tokens"})


def test_args_module_imports_only_pydantic() -> None:
    code = (
        "import sys, bigmodel_serving.args, bigmodel_serving.engine_args;"
        "heavy = {'ray', 'vllm', 'torch', 'fastapi'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd())
    assert out.stdout.strip() == "[]"
